"""What ``fab status`` adds from the ledger: the run, its elapsed time and spend, and the heartbeat on the host.

The heartbeat file (``REMOTE_DIR/lightning_logs/heartbeat.json``, written by
:class:`deploy.training.heartbeat.Heartbeat` every few seconds) is read over SSH together with the
host's clock, so its age does not depend on the laptop's clock. A heartbeat older than
:data:`HANG_AFTER` while the training process is alive is a hang. Log lines are shown without
terminal escapes and progress-bar redraws (``[A``, ``Validation DataLoader 0: 100%|...``,
``Validation: |  | 0/? [00:00<?, ?it/s]``).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deploy.ledger.cost import run_cost
from deploy.ledger.index import current_run, summarize
from deploy.ledger.model import Heartbeat, duration, now
from deploy.ledger.store import read_run
from deploy.storage import Storage

HEARTBEAT_FILE = "lightning_logs/heartbeat.json"
HANG_AFTER = 300.0
"""Seconds without a heartbeat while the process is alive before ``fab status`` calls it a hang."""
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Za-z0-9]")
# A tqdm bar: "Epoch 0:  50%|#####     | 7/14 [00:00<00:00, 40.1it/s]", and one whose total is not known yet,
# "Validation: |          | 0/? [00:00<?, ?it/s]" (Lightning's sanity check and validation bars start so).
_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\|\s*\d+/(?:\d+|\?)\s*\[(?:\d+:)?\d+:\d+")


def read_host_heartbeat(conn: Any, remote_dir: str) -> tuple[Heartbeat | None, float | None]:
    """(heartbeat, its age in seconds by the host's clock), or (None, None) when there is none yet."""
    path = shlex.quote(f"{remote_dir.rstrip('/')}/{HEARTBEAT_FILE}")
    result = conn.run(f"date -u +%s.%N; cat {path} 2>/dev/null", hide=True, warn=True, in_stream=False)
    first, _, body = (result.stdout or "").partition("\n")
    try:
        host_now = float(first.strip())
        beat = Heartbeat.from_dict(json.loads(body))
    except ValueError:
        return None, None
    if beat is None:
        return None, None
    return beat, max(0.0, host_now - beat.at.timestamp())


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
