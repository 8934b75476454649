"""The supervised run on a native host: deploy.remote.supervisor started, watched and stopped over SSH.

The supervisor keeps ``.gpu-deploy/supervisor.pid`` and ``state.json``; one shell command reads
both (is the pid a live supervisor, what does it say it is doing), so ``status`` and the wait for
training cost one round trip each.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from deploy.errors import HostError
from deploy.hosts.remote import cause, run, where
from deploy.runtimes.base import STARTED_MARKER, Progress, ServiceState
from deploy.runtimes.native.layout import LOG, META, SUPERVISOR, VENV

STOP_TIMEOUT = 120
GAVE_UP = ("failed", "exited", "stopped", "dead")


def service_state(alive: bool, state: Mapping) -> ServiceState:
    """Whether the supervisor lives and what its state.json says, as a :class:`ServiceState`."""
    if not state and not alive:
        return ServiceState(exists=False)
    status = state.get("status", "running" if alive else "absent")
    if not alive and status in ("starting", "running", "restarting", "stopping"):
        status = "dead"  # the pod restarted, or the supervisor was killed
    return ServiceState(exists=True, running=alive and status in ("starting", "running", "restarting"), status=status,
                        started_at=state.get("started_at", ""), restarts=int(state.get("restarts", 0)),
                        container=f"pid {state['child']}" if state.get("child") else "")


def parse_service(output: str) -> ServiceState:
    """The state command's output (``alive``/``gone``, then state.json) as a :class:`ServiceState`."""
    lines = output.strip().splitlines()
    if not lines:
        return ServiceState(exists=False)
    try:
        state = json.loads("\n".join(lines[1:])) if len(lines) > 1 else {}
    except ValueError:
        state = {}
    return service_state(lines[0].strip() == "alive", state if isinstance(state, dict) else {})


@dataclass(frozen=True)
class NativeService:
    """The supervised run in ``directory``: the native runtime's :class:`~deploy.runtimes.base.Service`."""

    directory: str
    kind: ClassVar[str] = "supervisor"

    @property
    def log_path(self) -> str:
        return posixpath.join(self.directory, LOG)

    def state_script(self) -> str:
        """A shell script that prints ``alive`` or ``gone``, then the supervisor's state.json."""
        return ('cd "$1" 2>/dev/null || exit 0; pid=$(cat supervisor.pid 2>/dev/null); '
                'if [ -n "$pid" ] && grep -q supervisor.py /proc/"$pid"/cmdline 2>/dev/null; '
                "then echo alive; else echo gone; fi; cat state.json 2>/dev/null")

    def state(self, conn: Any) -> ServiceState:
        meta = posixpath.join(self.directory, META)
        return parse_service(run(conn, ["sh", "-c", self.state_script(), "state", meta], "Reading the run's state",
                                 warn=True).stdout)

    def progress(self, conn: Any, since: int) -> Progress:
        """This start's output (from byte ``since`` of the log) and the state, in one round trip."""
        script = (f'if tail -c +"$2" "$3" 2>/dev/null | grep -q {shlex.quote(STARTED_MARKER)}; '
                  f"then echo started; else echo waiting; fi; {self.state_script()}")
        out = run(conn, ["sh", "-c", script, "progress", posixpath.join(self.directory, META), str(since + 1),
                         self.log_path], "Watching the run start", warn=True).stdout
        first, _, rest = out.partition("\n")
        state = parse_service(rest)
        failed = state.status in GAVE_UP or state.restarts > 0
        return Progress(state, started=first.strip() == "started" and state.running, failed=failed)

    def logs(self, conn: Any, tail: int = 100) -> str:
        return run(conn, ["tail", "-n", str(int(tail)), self.log_path], "Reading the log", warn=True).stdout

    def logs_command(self, tail: int = 100, follow: bool = False) -> str:
        return shlex.join(["tail", "-n", str(int(tail)), *(["-F"] if follow else []), self.log_path])

    def _supervisor(self, *args: str) -> list[str]:
        """The supervisor under the run's virtualenv python (python3 before the venv exists)."""
        venv_python = posixpath.join(self.directory, VENV, "bin", "python")
        script = posixpath.join(self.directory, SUPERVISOR)
        return ["sh", "-c", 'P="$1"; shift; [ -x "$P" ] || P=python3; exec "$P" "$@"', "supervise", venv_python,
                script, *args, "--dir", self.directory]

    def start(self, conn: Any, recreate: bool = False) -> int:
        """Start the supervisor (stopping a running one first); return the log offset of this start's output."""
        if self.state(conn).running:
            self.stop(conn)
        result = run(conn, self._supervisor("start"), "Starting the supervisor", warn=True)
        try:
            data = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            data = {"error": cause(result.stderr) or cause(result.stdout) or f"exit {result.exited}"}
        if "error" in data:
            raise HostError(f"The supervisor did not start in {self.directory} on {where(conn)}: {data['error']}")
        return int(data.get("log_offset", 0))

    def stop(self, conn: Any, timeout: int = STOP_TIMEOUT) -> None:
        run(conn, self._supervisor("stop", "--timeout", str(int(timeout))), f"Stopping the run in {self.directory}")
