"""``fab tensorboard``: TensorBoard on a run's logs, from the bucket or through an SSH tunnel to the host.

Two ways, chosen and said out loud (:func:`choose_source`):

- ``s3`` (works whenever the bucket does, host up or gone): the run's ``logs/version_N/`` are brought
  into a local cache with the ordinary incremental sync, TensorBoard serves that folder, and the
  sync repeats every ``refresh`` seconds while it runs (the training side uploads logs every epoch);
- ``ssh`` (the freshest, while the host is up and has TensorBoard): TensorBoard runs on the host on
  ``REMOTE_DIR/lightning_logs`` and an SSH tunnel brings its port here.

TensorBoard is an optional extra of the operator's install: :data:`MISSING` says which.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deploy.errors import ConfigError

MISSING = ("TensorBoard is not installed here; install the tensorboard extra: pip install 'gpu-deploy[tensorboard]'.")
SOURCES = ("auto", "s3", "ssh")


@dataclass(frozen=True)
class Choice:
    source: str
    why: str


def tensorboard_command() -> list[str]:
    """How to start TensorBoard here, or a :class:`ConfigError` naming the extra to install."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING) from None
    return [sys.executable, "-m", "tensorboard.main"]


def choose_source(requested: str, host_known: bool, host_has_tensorboard: Callable[[], bool]) -> Choice:
    """``s3`` or ``ssh``, and why; ``auto`` takes the tunnel only when the host is up with TensorBoard."""
    if requested not in SOURCES:
        raise ConfigError(f"--via must be one of {', '.join(SOURCES)}, got {requested!r}.")
    if requested == "s3":
        return Choice("s3", "--via=s3: the run's logs from the bucket, refreshed while TensorBoard runs")
    if requested == "ssh":
        return Choice("ssh", "--via=ssh: TensorBoard on the host through an SSH tunnel")
    if not host_known:
        return Choice("s3", "no host configured: the run's logs from the bucket, refreshed while TensorBoard runs")
    try:
        has = host_has_tensorboard()
    except Exception:  # noqa: BLE001 - an unreachable host is a reason to use the bucket, not a failure
        return Choice("s3", "the host is not reachable: the run's logs from the bucket, refreshed while it runs")
    if has:
        return Choice("ssh", "the host is up and has TensorBoard: a tunnel to it shows the newest steps")
    return Choice("s3", "the host has no TensorBoard: the run's logs from the bucket, refreshed while it runs")


def serve_local(folder: str, port: int, refresh: Callable[[], str], every: float,
                log: Callable[[str], None] = print, stop_after: float | None = None) -> int:
    """Run TensorBoard on ``folder`` and call ``refresh`` every ``every`` seconds until it exits or Ctrl-C.

    ``stop_after`` (tests) ends it after that many seconds. Returns TensorBoard's exit code.
    """
    cmd = tensorboard_command() + ["--logdir", folder, "--port", str(port), "--host", "127.0.0.1",
                                   "--reload_interval", str(max(5, int(every)))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log(f"TensorBoard on http://127.0.0.1:{port}/ serving {folder} (Ctrl-C stops it)")
    began = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM ends TensorBoard too, as Ctrl-C does
    try:
        while proc.poll() is None:
            deadline = time.monotonic() + every
            while proc.poll() is None and time.monotonic() < deadline:
                if stop_after is not None and time.monotonic() - began > stop_after:
                    proc.terminate()
                    break
                time.sleep(0.5)
            if proc.poll() is None:
                log(refresh())
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return proc.returncode or 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def tunnel_command(ssh: Sequence[str], target: str, remote_dir: str, port: int, remote_port: int = 6006) -> list[str]:
    """An ``ssh -L`` line that starts TensorBoard on the host and forwards its port here."""
    remote = (f"cd {shlex.quote(remote_dir)} && PATH=\"$PWD/.venv/bin:$PATH\" exec tensorboard --logdir lightning_logs "
              f"--host 127.0.0.1 --port {remote_port}")
    # -tt: the remote TensorBoard lives in the session's terminal and gets SIGHUP when the tunnel closes.
    return [*ssh, "-tt", "-L", f"127.0.0.1:{port}:127.0.0.1:{remote_port}", "-o", "ExitOnForwardFailure=yes",
            target, remote]


def host_probe_command(remote_dir: str) -> str:
    """Prints where TensorBoard is on the host (on PATH, or in the native runtime's virtualenv), or nothing."""
    return f"cd {shlex.quote(remote_dir)} 2>/dev/null; PATH=\"$PWD/.venv/bin:$PATH\" command -v tensorboard"
