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
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deploy.errors import ConfigError, DeployError

MISSING = ("TensorBoard is not installed here; install the tensorboard extra: pip install 'gpu-deploy[tensorboard]'.")
SOURCES = ("auto", "s3", "ssh")


class TensorBoardError(DeployError):
    """TensorBoard itself failed: it could not start, or it exited on its own with an error."""


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


def check_source(requested: str) -> str:
    """``requested`` when it is one of :data:`SOURCES`, else a ConfigError naming ``--via``."""
    if requested not in SOURCES:
        raise ConfigError(f"--via must be one of {', '.join(SOURCES)}, got {requested!r}.")
    return requested


def port_is_free(port: int) -> None:
    """A ConfigError naming ``--port`` when something here listens on it already (TensorBoard, or the tunnel,
    could not take it; TensorBoard would say so only after it started)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"Port {port} on this machine is taken already; pick another with --port.") from None


def choose_source(requested: str, host_known: bool, host_has_tensorboard: Callable[[], bool]) -> Choice:
    """``s3`` or ``ssh``, and why; ``auto`` takes the tunnel only when the host is up with TensorBoard."""
    check_source(requested)
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

    ``stop_after`` (tests) ends it after that many seconds. Returns 0 when it was stopped (Ctrl-C, SIGTERM,
    ``stop_after``); a :class:`TensorBoardError` with its last words when it exited on its own with an error.
    """
    cmd = tensorboard_command() + ["--logdir", folder, "--port", str(port), "--host", "127.0.0.1",
                                   "--reload_interval", str(max(5, int(every)))]
    with tempfile.TemporaryFile() as said:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=said)
        stopped = _serve(proc, port, folder, refresh, every, log, stop_after)
        if proc.returncode and not stopped:
            said.seek(0)
            words = [line.strip() for line in said.read().decode(errors="replace").splitlines() if line.strip()]
            raise TensorBoardError(f"TensorBoard exited with {proc.returncode}: "
                                   f"{words[-1][:200] if words else 'it said nothing'}.")
    return 0


def _serve(proc: subprocess.Popen[bytes], port: int, folder: str, refresh: Callable[[], str], every: float,
           log: Callable[[str], None], stop_after: float | None) -> bool:
    """Refresh while TensorBoard runs; True when we stopped it (Ctrl-C, SIGTERM, ``stop_after``)."""
    stopped = False
    # A SIGTERM ends TensorBoard too, as Ctrl-C does, from the moment it runs (also while it starts: else fab
    # would die of the signal and leave TensorBoard serving).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if _started(proc, port):
            log(f"TensorBoard on http://127.0.0.1:{port}/ serving {folder} (Ctrl-C stops it)")
        began = time.monotonic()
        while proc.poll() is None:
            deadline = time.monotonic() + every
            while proc.poll() is None and time.monotonic() < deadline:
                if stop_after is not None and time.monotonic() - began > stop_after:
                    stopped = True
                    proc.terminate()
                    break
                time.sleep(0.5)
            if proc.poll() is None:
                log(refresh())
    except KeyboardInterrupt:
        stopped = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            stopped = True
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return stopped


def _started(proc: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> bool:
    """Until TensorBoard listens on ``port`` (True) or exits first (False): its address is said only when true."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return proc.poll() is None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def tunnel_args(target: str, remote_dir: str, port: int, remote_port: int = 6006) -> list[str]:
    """ssh's arguments (after its options) for a tunnel that starts TensorBoard on the host and forwards its port."""
    remote = (f"cd {shlex.quote(remote_dir)} && PATH=\"$PWD/.venv/bin:$PATH\" exec tensorboard --logdir lightning_logs "
              f"--host 127.0.0.1 --port {remote_port}")
    # -tt: the remote TensorBoard lives in the session's terminal and gets SIGHUP when the tunnel closes.
    return ["-tt", "-L", f"127.0.0.1:{port}:127.0.0.1:{remote_port}", "-o", "ExitOnForwardFailure=yes", target, remote]


def tunnel_command(ssh: Sequence[str], target: str, remote_dir: str, port: int, remote_port: int = 6006) -> list[str]:
    """An ``ssh -L`` line that starts TensorBoard on the host and forwards its port here."""
    return [*ssh, *tunnel_args(target, remote_dir, port, remote_port)]


def host_probe_command(remote_dir: str) -> str:
    """Prints where TensorBoard is on the host (on PATH, or in the native runtime's virtualenv), or nothing."""
    return f"cd {shlex.quote(remote_dir)} 2>/dev/null; PATH=\"$PWD/.venv/bin:$PATH\" command -v tensorboard"
