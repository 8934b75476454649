"""A warm reload of the running training after a code-only redeploy, and the entrypoint's state it relies on.

    python -m deploy.training.reload [--timeout SECONDS]     # in REMOTE_DIR (/workspace in a container)

The entrypoint keeps ``.gpu-deploy/entrypoint.json`` (when ``.gpu-deploy`` exists, i.e. under a
deploy): its pid and ``/proc`` start time, the launch ``generation``, its ``state`` (``starting``,
``training``, ``reloading``, ``ended``) and the ``digest`` of what it started from besides the
project's code (``.env``, gpu-deploy's own code in ``.gpu-deploy/app``, the native ``run.json`` and
virtualenv marker). On SIGUSR2 it stops the training as ``fab stop`` would (SIGTERM: the stop
checkpoint is saved and sent), resumes from it and starts the training again from a Python that
imported torch and Lightning meanwhile (:mod:`deploy.training.warm`), without restarting itself.

This program, run by deploy on the host (native) or in the container (compose), signals it only
when that is safe: the entrypoint is the one recorded and is training, and nothing but the
project's code changed since it started. Otherwise it signals nothing and says why (deploy then
restarts the service cold). It prints one JSON line: ``{"reloaded": true, "generation": N,
"log_offset": B}`` or ``{"reloaded": false, "signalled": bool, "why": "..."}``. Standard library only.

``--prewarm`` only asks, under the same conditions, for the warm process to be started now (SIGUSR1, to
an entrypoint whose state file names that signal: an older one would die of it) and returns at once
with ``{"prewarmed": bool, "why": "..."}``: deploy sends it as soon as it is connected, so torch and
Lightning import while it plans and sends the code. The entrypoint drops a warm process that no reload
took within :data:`PREWARM_HOLD` seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

STATE_FILE = ".gpu-deploy/entrypoint.json"
RELOAD_SIGNAL = signal.SIGUSR2
PREWARM_SIGNAL = signal.SIGUSR1
PREWARM_HOLD = 120.0  # seconds a warm process started ahead waits for its reload before the entrypoint drops it
LOG = "train.log"  # the native runtime's log (a container logs to Docker): its size is where a new launch's lines begin
_DIGESTED = (".env", ".gpu-deploy/run.json", ".venv/gpu-deploy.json")
_APP = ".gpu-deploy/app"


def environment_digest(root: str | os.PathLike[str] = ".") -> str:
    """What a running entrypoint depends on besides the project's code: a change here needs a cold restart."""
    base, digest = Path(root), hashlib.sha256()
    for name in _DIGESTED:
        path = base / name
        digest.update(f"{name}\0".encode())
        digest.update(path.read_bytes() if path.is_file() else b"\0absent")
    app = base / _APP
    for path in sorted(p for p in app.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{path.relative_to(app)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22): a pid and its ticks
    name one process, a reused pid has other ticks."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


class EntrypointState:
    """The entrypoint's ``.gpu-deploy/entrypoint.json``, written atomically at each change; nothing outside a deploy."""

    def __init__(self, root: str | os.PathLike[str] = ".") -> None:
        self.path = Path(root) / STATE_FILE
        self.enabled = self.path.parent.is_dir()
        self.generation = 0
        self.digest = environment_digest(root) if self.enabled else ""

    def write(self, state: str) -> None:
        if not self.enabled:
            return
        body = {"pid": os.getpid(), "ticks": start_ticks(os.getpid()), "generation": self.generation,
                "state": state, "digest": self.digest, "signal": RELOAD_SIGNAL.name,
                "prewarm": PREWARM_SIGNAL.name}
        part = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")
        try:
            part.write_text(json.dumps(body) + "\n")
            os.replace(part, self.path)
        except OSError:
            pass  # a read-only or full disk must not stop the training; a reload then restarts cold

    def launched(self) -> None:
        self.generation += 1
        self.write("training")


def read_state(root: Path) -> dict | None:
    try:
        data = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def refusal(root: Path, state: dict | None) -> str | None:
    """Why the running entrypoint must not be reloaded, or None when it may."""
    if state is None:
        return f"no {STATE_FILE}: the running entrypoint predates warm reloads or is not running"
    pid = state.get("pid")
    ticks = start_ticks(pid) if isinstance(pid, int) and pid > 0 else None
    if ticks is None or ticks != state.get("ticks"):
        return "the entrypoint that wrote it is no longer running"
    if state.get("state") != "training":
        return f"the entrypoint is {state.get('state')!r}, not training"
    if state.get("digest") != environment_digest(root):
        return "its settings, packages or gpu-deploy's own code changed since it started"
    return None


def reload(root: Path, timeout: float) -> dict:
    state = read_state(root)
    why = refusal(root, state)
    if why is not None or state is None:
        return {"reloaded": False, "signalled": False, "why": why}
    log = root / LOG
    offset = log.stat().st_size if log.is_file() else 0
    generation, pid = int(state["generation"]), int(state["pid"])
    os.kill(pid, RELOAD_SIGNAL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read_state(root) or {}
        if int(now.get("generation", 0)) > generation and now.get("state") == "training":
            return {"reloaded": True, "generation": now["generation"], "log_offset": offset}
        if now.get("state") == "ended" or start_ticks(pid) != state.get("ticks"):
            return {"reloaded": False, "signalled": True, "why": "the entrypoint ended instead of training again"}
        time.sleep(0.1)
    return {"reloaded": False, "signalled": True, "why": f"the training did not start again within {timeout:.0f} s"}


def prewarm(root: Path) -> dict:
    """Ask the running entrypoint to start its warm process now, when a reload would be allowed; no waiting."""
    state = read_state(root)
    why = refusal(root, state)
    if why is None and state is not None and state.get("prewarm") != PREWARM_SIGNAL.name:
        why = "the entrypoint predates warming ahead"
    if why is not None or state is None:
        return {"prewarmed": False, "why": why}
    try:
        os.kill(int(state["pid"]), PREWARM_SIGNAL)
    except OSError as exc:
        return {"prewarmed": False, "why": f"could not signal the entrypoint: {exc.strerror or exc}"}
    return {"prewarmed": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.training.reload",
                                     description="Reload the running training with the new code, warm.")
    parser.add_argument("--dir", default=".", help="REMOTE_DIR (default: the working directory)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the new launch")
    parser.add_argument("--prewarm", action="store_true",
                        help="only have the entrypoint start importing torch and Lightning for a reload to come")
    options = parser.parse_args(argv)
    answer = prewarm(Path(options.dir)) if options.prewarm else reload(Path(options.dir), options.timeout)
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
