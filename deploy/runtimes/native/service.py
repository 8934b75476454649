"""The supervised run on a native host: deploy.remote.supervisor started, watched and stopped over SSH.

The supervisor keeps ``.gpu-deploy/supervisor.pid`` and ``state.json`` and tracks the training
itself (``train.lock``, ``training.json``); ``supervisor.py status --dir`` reports all of it as one
JSON line, including ``status: orphaned`` when the supervisor was killed but its training lives. One
command reads it, so ``status`` and the wait for training cost one round trip each. An orphaned
training is not a running service: a deploy starts one, and every start stops what runs first
(an orphan included), so there is never a second training beside the first.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TYPE_CHECKING

from deploy.errors import HostError
from deploy.hosts.remote import cause, run, where
from deploy.runtimes.base import STARTED_MARKER, Look, Progress, ServiceState, look_at, look_command, parse_look
from deploy.runtimes.code.layout import APP, LOG
from deploy.runtimes.native.layout import SUPERVISOR, VENV, training_paths

if TYPE_CHECKING:
    from fabric import Connection

STOP_TIMEOUT = 120
GAVE_UP = ("failed", "exited", "stopped", "dead", "orphaned")
ORPHANED = "orphaned"
# $1 the venv's python, $2 supervisor.py, $3 REMOTE_DIR: the supervisor's own status (nothing when not deployed).
STATUS_SCRIPT = 'S="$2"; [ -f "$S" ] || exit 0; P="$1"; [ -x "$P" ] || P=python3; exec "$P" "$S" status --dir "$3"'


def service_state(alive: bool, state: Mapping) -> ServiceState:
    """Whether the supervisor lives and what it says (``supervisor.py status``), as a :class:`ServiceState`.

    ``status: orphaned`` (the supervisor is gone, its training lives) is not running: the training
    has no supervisor to restart or stop it, so a deploy starts one and the start stops the orphan.
    """
    training = state.get("training") if isinstance(state.get("training"), dict) else {}
    recorded = {k for k in state if k not in ("alive", "training")}  # what state.json itself holds
    if not recorded and not alive and not training.get("running"):
        return ServiceState(exists=False)
    status = state.get("status", "running" if alive else "absent")
    if not alive and training.get("running"):
        status = ORPHANED
    elif not alive and status in ("starting", "running", "restarting", "stopping"):
        status = "dead"  # the pod restarted, or the supervisor was killed
    pid = training.get("pid") or state.get("child")
    return ServiceState(exists=True, running=alive and status in ("starting", "running", "restarting"), status=status,
                        started_at=state.get("started_at", ""), restarts=int(state.get("restarts", 0)),
                        container=f"pid {pid}" if pid else "")


def parse_service(output: str) -> ServiceState:
    """``supervisor.py status``'s JSON line as a :class:`ServiceState` (no output: nothing deployed)."""
    lines = output.strip().splitlines()
    if not lines:
        return ServiceState(exists=False)
    try:
        state = json.loads(lines[-1])
    except ValueError:
        state = {}
    state = state if isinstance(state, dict) else {}
    return service_state(bool(state.get("alive")), state)


def read_status(output: str) -> tuple[ServiceState, str]:
    """The supervisor's status in a look: its state, and its status word, which is the training word itself."""
    state = parse_service(output)
    return state, state.status


def parse_native_look(output: str) -> Look:
    """A native look's output (:meth:`NativeService.look_command`) as a :class:`~deploy.runtimes.base.Look`."""
    return parse_look(output, read_status)


@dataclass(frozen=True)
class NativeService:
    """The supervised run in ``directory``: the native runtime's :class:`~deploy.runtimes.base.Service`."""

    directory: str
    kind: ClassVar[str] = "supervisor"

    @property
    def log_path(self) -> str:
        return posixpath.join(self.directory, LOG)

    def _status_args(self) -> list[str]:
        return [posixpath.join(self.directory, VENV, "bin", "python"), posixpath.join(self.directory, SUPERVISOR),
                self.directory]

    def state(self, conn: Connection) -> ServiceState:
        return parse_service(run(conn, ["sh", "-c", STATUS_SCRIPT, "state", *self._status_args()],
                                 "Reading the run's state", warn=True).stdout)

    def _status_command(self) -> str:
        return shlex.join(["sh", "-c", STATUS_SCRIPT, "state", *self._status_args()])

    def look_command(self) -> str:
        """The supervisor's status (the script ``state`` runs), then the heartbeat and the GPUs' use."""
        return look_command(self._status_command(), self.directory)

    def look(self, conn: Connection) -> Look:
        return look_at(conn, self._status_command(), self.directory, read_status)

    def backstop_args(self) -> list[str]:
        """The run's virtualenv python, its supervisor (``supervisor.py stop``) and gpu-deploy's code for the ledger."""
        return ["--python", posixpath.join(self.directory, VENV, "bin", "python"),
                "--supervisor", posixpath.join(self.directory, SUPERVISOR), "--app", posixpath.join(self.directory, APP)]

    def progress(self, conn: Connection, since: int) -> Progress:
        """This start's output (from byte ``since`` of the log) and the state, in one round trip."""
        script = (f'if tail -c +"$4" "$5" 2>/dev/null | grep -q {shlex.quote(STARTED_MARKER)}; '
                  f"then echo started; else echo waiting; fi; {STATUS_SCRIPT}")
        out = run(conn, ["sh", "-c", script, "progress", *self._status_args(), str(since + 1), self.log_path],
                  "Watching the run start", warn=True).stdout
        first, _, rest = out.partition("\n")
        state = parse_service(rest)
        failed = state.status in GAVE_UP or state.restarts > 0
        return Progress(state, started=first.strip() == "started" and state.running, failed=failed)

    def logs(self, conn: Connection, tail: int = 100) -> str:
        return run(conn, ["tail", "-n", str(int(tail)), self.log_path], "Reading the log", warn=True).stdout

    def logs_command(self, tail: int = 100, follow: bool = False) -> str:
        return shlex.join(["tail", "-n", str(int(tail)), *(["-F"] if follow else []), self.log_path])

    def reload_command(self, *options: str) -> str:
        """``python -m deploy.training.reload`` in REMOTE_DIR, with the training's python and gpu-deploy's code."""
        return self.shell_command(shlex.join(["exec", "python", "-m", "deploy.training.reload", *options]))

    def shell_command(self, script: str) -> str:
        """``sh -c SCRIPT`` in the directory with the training's PATH and PYTHONPATH first (the run's virtualenv,
        the project, gpu-deploy's code: :func:`~deploy.runtimes.native.layout.training_paths`) and VIRTUAL_ENV set."""
        paths = training_paths(self.directory)
        env = [f"VIRTUAL_ENV={shlex.quote(posixpath.join(self.directory, VENV))}", "PYTHONUNBUFFERED=1"]
        env += [f"{name}={shlex.quote(':'.join(first))}${{{name}:+:${name}}}" for name, first in paths.items()]
        return f"cd {shlex.quote(self.directory)} && exec env {' '.join(env)} sh -c {shlex.quote(script)}"

    def _supervisor(self, *args: str) -> list[str]:
        """The supervisor under the run's virtualenv python (python3 before the venv exists)."""
        venv_python = posixpath.join(self.directory, VENV, "bin", "python")
        script = posixpath.join(self.directory, SUPERVISOR)
        return ["sh", "-c", 'P="$1"; shift; [ -x "$P" ] || P=python3; exec "$P" "$@"', "supervise", venv_python,
                script, *args, "--dir", self.directory]

    def start(self, conn: Connection, recreate: bool = False) -> int:
        """Start the supervisor; return the log offset of this start's output.

        Whatever runs is stopped first, every time: a running supervisor, and also a training whose
        supervisor was killed (the state then says orphaned, not running); ``stop`` does nothing
        when nothing runs. Without it the supervisor would refuse to start beside the orphan.
        """
        self.stop(conn)
        result = run(conn, self._supervisor("start"), "Starting the supervisor", warn=True)
        try:
            data = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            data = {"error": cause(result.stderr) or cause(result.stdout) or f"exit {result.exited}"}
        if "error" in data:
            raise HostError(f"The supervisor did not start in {self.directory} on {where(conn)}: {data['error']}")
        return int(data.get("log_offset", 0))

    def stop(self, conn: Connection, timeout: int = STOP_TIMEOUT) -> None:
        run(conn, self._supervisor("stop", "--timeout", str(int(timeout))), f"Stopping the run in {self.directory}")
