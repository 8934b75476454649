"""What ``fab status`` adds from the ledger: the run, its elapsed time and spend, and the heartbeat on the host.

The heartbeat file (``REMOTE_DIR/lightning_logs/heartbeat.json``, written by
:class:`deploy.training.heartbeat.Heartbeat` every few seconds) is read on the host together with the
host's clock, in the same look as the service (``Service.look`` of the host's runtime), so its age
does not depend on the laptop's clock. A heartbeat older than :data:`HANG_AFTER` while the training
process is alive is a hang. Log lines are shown without
terminal escapes and progress-bar redraws (``[A``, ``Validation DataLoader 0: 100%|...``,
``Validation: |  | 0/? [00:00<?, ?it/s]``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

from deploy.ledger.cost import run_cost
from deploy.ledger.index import current_run, summarize
from deploy.ledger.model import HEARTBEAT_FILE, Heartbeat, duration, now
from deploy.ledger.store import read_run
from deploy.storage import Storage

HANG_AFTER = 300.0
"""Seconds without a heartbeat while the process is alive before ``fab status`` calls it a hang."""
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Za-z0-9]")
# A tqdm bar: "Epoch 0:  50%|#####     | 7/14 [00:00<00:00, 40.1it/s]", and one whose total is not known yet,
# "Validation: |          | 0/? [00:00<?, ?it/s]" (Lightning's sanity check and validation bars start so).
_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\|\s*\d+/(?:\d+|\?)\s*\[(?:\d+:)?\d+:\d+")


def heartbeat_of(text: str, host_clock: float | None) -> tuple[Heartbeat | None, float | None]:
    """(heartbeat, its age in seconds by the host's clock), or (None, None) when there is none yet.

    ``text`` is the heartbeat file as the host had it and ``host_clock`` the host's time when it was
    read: both come from one look at the run (deploy.runtimes.base.Look), whatever the runtime.
    """
    if host_clock is None:
        return None, None
    try:
        beat = Heartbeat.from_dict(json.loads(text))
    except ValueError:
        return None, None
    if beat is None:
        return None, None
    return beat, max(0.0, host_clock - beat.at.timestamp())


def progress_line(beat: Heartbeat | None, age: float | None, running: bool) -> tuple[str, bool]:
    """(the ``progress`` line, hang): a stale heartbeat while the process runs is a hang."""
    if beat is None:
        return ("no heartbeat yet (the Heartbeat callback writes one every few seconds once training runs)"
                if running else "no heartbeat"), False
    hang = running and age is not None and age > HANG_AFTER
    line = f"{beat.progress()} ({duration(age)} ago)"
    if hang:
        line += f"; HANG? no heartbeat for {duration(age)} while the process is alive"
    return line, hang


def clean_log_lines(text: str) -> list[str]:
    """Log lines as a person reads them: the last redraw of each line, no escapes, no progress bars."""
    lines = []
    for raw in text.rstrip().split("\n"):
        line = _ANSI.sub("", raw.split("\r")[-1]).rstrip()
        if line.strip() and not _BAR.search(line):
            lines.append(line)
    return lines


@dataclass(frozen=True)
class RunOverview:
    run_id: str
    state: str
    elapsed_seconds: float
    spend: str
    restarts: int

    def describe(self) -> str:
        return (f"{self.run_id}: {self.state}, {duration(self.elapsed_seconds)} since the first deploy, "
                f"spent {self.spend}, {self.restarts} restart(s)")


def run_overview(storage: Storage, run_id: str | None = None, moment: datetime | None = None) -> RunOverview | None:
    """The run (``run_id``, else the newest unfinished one) with its spend up to now, or None."""
    moment = moment or now()
    if run_id is None:
        found = current_run(storage)
        run_id = str(found["run_id"]) if found else None
    run = read_run(storage, run_id) if run_id else None
    if run is None:
        return None
    summary = summarize(run, moment)
    until = moment if summary["open"] and summary["state"] == "running" else None
    cost = run_cost(run.events, run.heartbeats, until=until)
    return RunOverview(run_id=run.run_id, state=summary["state"],
                       elapsed_seconds=(moment - run.record.created).total_seconds(), spend=cost.describe(),
                       restarts=summary["restarts"])
