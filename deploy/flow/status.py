"""Watching a run: the service, the GPUs, the run ledger's run and spend, the training's heartbeat, the last
log lines and the newest checkpoint in S3; and the service's log as a stream (``fab logs``).

Almost every value shown here was written by the host or into the bucket: the status text goes line by
line through :func:`deploy.hosts.text.printable`, and the log stream through its
:class:`~deploy.hosts.text.PrintableStream`, so nothing a host writes reaches the terminal raw.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, TYPE_CHECKING, TextIO

from deploy.errors import DeployError
from deploy.flow.choose import choose_runtime, runtimes
from deploy.hosts.probe import Gpu, probe
from deploy.hosts.remote import stream
from deploy.hosts.text import printable
from deploy.ledger.live import HEARTBEAT_FILE, clean_log_lines, heartbeat_of, progress_line, run_overview
from deploy.ledger.model import Heartbeat
from deploy.ledger.store import check_shape
from deploy.runtimes.base import STARTED_MARKER, Look, Service, ServiceState
from deploy.storage import Storage
from deploy.storage.checkpoints import latest_checkpoint

if TYPE_CHECKING:
    from fabric import Connection


@dataclass(frozen=True)
class RunStatus:
    host: str
    service: ServiceState
    uptime_seconds: float | None
    gpus: tuple[Gpu, ...]
    log_tail: str
    latest_checkpoint: str | None = None
    latest_step: int | None = None
    latest_age_seconds: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    run: str | None = None  # the run ledger: id, state, elapsed, spend (deploy.ledger.live)
    progress: str | None = None  # from the training's heartbeat on the host
    hang: bool = False  # the heartbeat is stale while the process is alive

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> list[str]:
        s = self.service
        if not s.exists:
            state = "not deployed"
        elif s.running and self.uptime_seconds is not None:
            state = f"{s.status}, up {_ago(self.uptime_seconds)}, {s.restarts} restarts"
        else:  # an exited service has no uptime to show
            state = f"{s.status}, {s.restarts} restarts"
        lines = [f"host        {self.host}", f"service     {state}"]
        if self.run:
            lines.append(f"run         {self.run}")
        if self.progress:
            lines.append(f"progress    {self.progress}")
        for gpu in self.gpus:
            util = f"{gpu.utilization}%" if gpu.utilization is not None else "?"
            used = f"{gpu.memory_used_mb}" if gpu.memory_used_mb is not None else "?"
            lines.append(f"gpu         {gpu.name}: {util} busy, {used}/{gpu.memory_mb} MiB")
        if not self.gpus:
            lines.append("gpu         none")
        if self.latest_checkpoint:
            lines.append(f"checkpoint  step {self.latest_step} ({self.latest_checkpoint}), "
                         f"uploaded {_ago(self.latest_age_seconds)} ago")
        else:
            lines.append("checkpoint  none in S3 yet")
        lines += [f"note        {n}" for n in self.notes]
        lines = [printable(line) for line in lines]
        if self.log_tail.strip():
            lines.append("last log lines:")
            # Progress bars redraw with \r and escapes: the heartbeat says the progress; show the other lines.
            lines += ["  " + line for line in clean_log_lines(printable(self.log_tail, lines=True))]
        return lines


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _since(iso: str) -> float | None:
    if not iso or iso.startswith("0001"):
        return None
    try:
        stamp = datetime.fromisoformat(iso[:26].rstrip("Z") + "+00:00" if iso.endswith("Z") else iso)
    except ValueError:
        try:
            stamp = datetime.fromisoformat(iso.split(".")[0] + "+00:00")
        except ValueError:
            return None
    return (datetime.now(timezone.utc) - stamp).total_seconds()


def service_on(conn: Connection, remote_dir: str) -> tuple[Service, tuple[Gpu, ...]]:
    """The deployed service on a host and its GPUs; the runtime is read from the probe as ``auto`` does
    (a native deploy, or a host without Compose such as a RunPod pod, is native; else compose)."""
    facts = probe(conn, remote_dir)
    name, _ = choose_runtime("auto", facts)
    return runtimes()[name].service(remote_dir, facts), facts.gpus


def run_status(conn: Connection, host: str, remote_dir: str, storage: Storage | None, tail: int = 10) -> RunStatus:
    running, gpus = service_on(conn, remote_dir)
    look = running.look(conn)
    service = look.service
    logs = running.logs(conn, tail=tail) if service.exists else ""
    notes: list[str] = []
    name = step = age = None
    if storage is not None:
        try:
            latest = latest_checkpoint(storage)
        except DeployError as exc:
            notes.append(f"S3 not checked: {exc}")
            latest = None
        if latest is not None:
            name, step = latest.name, latest.step
            age = (datetime.now(timezone.utc) - latest.uploaded).total_seconds() if latest.uploaded else None
    beat, beat_age = _host_heartbeat(look, notes) if service.exists else (None, None)
    progress, hang = progress_line(beat, beat_age, service.running) if service.exists else (None, False)
    overview = None
    if storage is not None:
        try:
            overview = run_overview(storage)
        except DeployError as exc:
            notes.append(f"run ledger not read: {exc}")
    return RunStatus(host=host, service=service, uptime_seconds=_since(service.started_at) if service.running else None,
                     gpus=gpus, log_tail=logs, latest_checkpoint=name, latest_step=step, latest_age_seconds=age,
                     notes=tuple(notes), run=overview.describe() if overview else None, progress=progress, hang=hang)


def _host_heartbeat(look: Look, notes: list[str]) -> tuple[Heartbeat | None, float | None]:
    """The heartbeat file on the host, or a note when it is JSON of another shape (the host wrote it)."""
    try:
        beat, age = heartbeat_of(look.heartbeat, look.clock)
        if beat is None or check_shape(beat.to_dict(), "heartbeat") is None:  # no NaN, no 1e999 ...
            return beat, age
    except (AttributeError, TypeError, ValueError, OverflowError):
        pass
    notes.append(f"the heartbeat file on the host ({HEARTBEAT_FILE}) is not a heartbeat; progress unknown")
    return None, None


# The training side prints this once on rank zero after its SIGTERM save (deploy.training.stop.SAVED_ON_STOP).
_SAVED = re.compile(r"gpu-deploy: saved step (\d+) on stop(?:, (.*))?")
_ENTRYPOINT = "entrypoint: "  # every line the entrypoint prints (deploy.training.entrypoint) starts so


def saved_on_stop(log_tail: str) -> tuple[int, str] | None:
    """The step the last graceful stop saved, and where it went, from the service's last log lines."""
    found = _SAVED.findall(log_tail)
    if not found:
        return None
    step, where = found[-1]
    return int(step), where.strip()


def new_lines(before: str, after: str) -> str:
    """The lines ``after`` (a log's tail read later) has beyond ``before`` (its tail read earlier); pure.

    Both are tails of one log that only grows, so the start of ``after`` is the end of ``before``: the
    longest such overlap is found (the last line of ``before`` may have been half written, so it only
    has to begin its line in ``after``) and what follows it is new. No overlap (more than a tail was
    printed in between): all of ``after`` is new.
    """
    old, now = before.splitlines(), after.splitlines()
    if not old:
        return after
    for end in range(min(len(old), len(now)), 0, -1):
        if now[end - 1].startswith(old[-1]) and now[:end - 1] == old[len(old) - end:-1]:
            return "\n".join(now[end:])
    return after


def training_launched(log_tail: str) -> bool | None:
    """Whether the newest start in the log launched the training command: its last entrypoint line is
    the launch (:data:`~deploy.runtimes.base.STARTED_MARKER`); a start still restoring from S3 has not.
    None when the log has no entrypoint line at all."""
    # Compose prefixes each line with the container's name ("train_1  | entrypoint: ...").
    said = [line[line.index(_ENTRYPOINT):] for line in log_tail.splitlines() if _ENTRYPOINT in line]
    return said[-1].startswith(STARTED_MARKER) if said else None


def newest_in_s3(storage: Storage | None) -> str:
    """The newest checkpoint in the bucket, in words for a stop's line; "" without a bucket."""
    if storage is None:
        return ""
    try:
        latest = latest_checkpoint(storage)
    except DeployError as exc:
        return f"S3 not checked: {exc}"
    if latest is None:
        return "there is no checkpoint in S3 yet: nothing was trained"
    return f"the newest checkpoint in S3 is step {latest.step} ({latest.name})"


def describe_stop(supervised: bool, before: str, after: str, newest: str = "") -> str:
    """What a stop did, from the service's log before and after it; pure.

    The training prints :data:`~deploy.training.stop.SAVED_ON_STOP` when it saved a step on SIGTERM:
    only a line the stop itself added counts (an earlier stop's line may still be in the log). Without
    one nothing new was saved: the start was still restoring from S3 (the training never launched),
    or no step was saved on the stop; then ``newest`` (:func:`newest_in_s3`) says what the next start
    resumes from.
    """
    what = "stopped" if supervised else "stopped a training whose supervisor was gone"
    added = new_lines(before, after)
    saved = saved_on_stop(added)
    if saved is not None:
        return f"{what}; saved step {saved[0]}" + (f" ({saved[1]})" if saved[1] else "")
    if training_launched(after) is False:
        what += " before the training started (it was restoring from S3); nothing new was saved"
    else:
        what += "; nothing new was saved (no step was saved on the stop)"
    return f"{what}; {newest}" if newest else what


def plan_stop(conn: Connection, remote_dir: str, timeout: int) -> str:
    """What :func:`stop_run` would do on this host, asked without changing anything (``--dry-run``)."""
    service, _ = service_on(conn, remote_dir)
    before = service.state(conn)
    if not (before.running or before.status == "orphaned"):
        return f"nothing to stop: the training {service.kind} is {before.status}"
    return (f"would stop the training {service.kind} ({before.status}): SIGTERM, up to {timeout} s for pending "
            "uploads to flush, then the kill")


def stop_run(conn: Connection, remote_dir: str, timeout: int, storage: Storage | None = None) -> str:
    """Stop the run in ``remote_dir`` gracefully and say what happened: the step it saved, or that it saved
    nothing and which checkpoint in ``storage`` the next start resumes from (:func:`describe_stop`)."""
    service, _ = service_on(conn, remote_dir)
    before = service.state(conn)
    if not (before.running or before.status == "orphaned"):  # orphaned: the supervisor was killed
        return "was not running"
    earlier = service.logs(conn, tail=400)
    service.stop(conn, timeout=timeout)
    after = service.logs(conn, tail=400)
    saved = saved_on_stop(new_lines(earlier, after))
    return describe_stop(before.running, earlier, after, "" if saved else newest_in_s3(storage))


def stream_logs(conn: Connection, remote_dir: str, out: TextIO, tail: int = 100, follow: bool = False) -> int:
    """Print the service's log to ``out`` as it arrives (:func:`deploy.hosts.remote.stream`); the command's exit code."""
    service, _ = service_on(conn, remote_dir)
    return stream(conn, service.logs_command(tail=tail, follow=follow), out)
