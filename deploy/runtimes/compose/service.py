"""The compose runtime's running service: one Compose project on a host (:class:`ComposeProject`), its commands
(up, stop, logs, the reload by ``docker exec``) and how its container's state is read (``docker ps`` then
``docker inspect``, in one round trip).
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TYPE_CHECKING

from deploy.hosts.remote import run, run_together
from deploy.runtimes.base import STARTED_MARKER, Look, Progress, ServiceState, look_at, look_command, parse_look

if TYPE_CHECKING:
    from fabric import Connection

SERVICE_FILE = "docker-compose.runpod.yml"
GPU_FILE = "docker-compose.gpu.yml"
SERVICE = "train"
STOP_TIMEOUT = 120  # seconds Compose waits after SIGTERM; longer than the uploader's flush deadline
ENDED = ("exited", "dead")
STOPPED_CODES = (143, 137)  # the entrypoint after SIGTERM (128 + 15), or the kill after the stop's grace
STATE_FORMAT = '{"state": {{json .State}}, "image": {{json .Image}}, "restarts": {{.RestartCount}}}'


@dataclass(frozen=True)
class ComposeProject:
    """One Compose project in ``directory`` on a host: the compose runtime's :class:`Service`."""

    command: str
    directory: str
    files: tuple[str, ...]
    name: str
    service: str = SERVICE
    kind: ClassVar[str] = "container"

    def argv(self, *args: str) -> list[str]:
        files = [arg for f in self.files for arg in ("-f", f)]
        return [*self.command.split(), "-p", self.name, *files, *args]

    def _run(self, conn: Connection, *args: str, what: str) -> Any:
        return run(conn, self.argv(*args), f"`{self.command} {what}` in {self.directory}", cwd=self.directory)

    def start(self, conn: Connection, recreate: bool = False) -> int:
        self._run(conn, "up", "-d", *(["--force-recreate"] if recreate else []), self.service, what="up")
        return 0  # a (re)created container's logs start empty

    def stop(self, conn: Connection, timeout: int = STOP_TIMEOUT) -> None:
        self._run(conn, "stop", "-t", str(timeout), self.service, what="stop")

    def logs(self, conn: Connection, tail: int = 100) -> str:
        return self._run(conn, "logs", "--no-color", f"--tail={tail}", self.service, what="logs").stdout

    def logs_command(self, tail: int = 100, follow: bool = False) -> str:
        argv = self.argv("logs", "--no-color", f"--tail={tail}", *(["-f"] if follow else []), self.service)
        return f"cd {shlex.quote(self.directory)} && {shlex.join(argv)}"

    def reload_command(self, *options: str) -> str:
        """``python -m deploy.training.reload`` in the service's running container, beside its entrypoint (its
        environment and working directory): ``docker exec`` in the container ``docker ps`` names, as ``compose
        exec -T`` would, without Compose's own start (about a second with Compose 1.29) before the reload."""
        reload = shlex.join(["python", "-m", "deploy.training.reload", *options])
        missing = shlex.quote(f"the service {self.service} has no running container")
        running = shlex.join(self._ps(stopped=False))
        return (f'id=$({running} | head -n 1); [ -n "$id" ] || {{ echo {missing} >&2; exit 1; }}; '
                f'exec docker exec "$id" {reload}')

    def shell_command(self, script: str) -> str:
        """A one-off container of the service (its image, ``.env``, environment and ``/workspace`` mount), removed
        after: ``run --rm --no-deps -T --entrypoint sh train -c SCRIPT``, the same for Compose v2 and 1.29."""
        argv = self.argv("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", self.service, "-c", script)
        return f"cd {shlex.quote(self.directory)} && {shlex.join(argv)}"

    def progress(self, conn: Connection, since: int) -> Progress:
        """The service's state and whether its log shows the training started, in one round trip: ``docker logs``
        of the container, not ``compose logs`` (Compose 1.29 spends half a second of the host's CPU starting)."""
        newest = f'id=$({shlex.join(self._ps())} | head -n 1); [ -z "$id" ] || docker logs --tail 200 "$id" 2>&1'
        look, log = run_together(conn, [self.state_command(), newest], "Reading the service")
        state = read_container(look.stdout)[0]
        failed = state.exists and not state.running and state.status in ENDED
        started = state.running and STARTED_MARKER in log.stdout
        return Progress(state, started=started, failed=failed)

    def _ps(self, stopped: bool = True) -> list[str]:
        """``docker ps`` of the service's container ids (``stopped``: those that no longer run too)."""
        return ["docker", "ps", "-aq" if stopped else "-q", "--filter", f"label=com.docker.compose.project={self.name}",
                "--filter", f"label=com.docker.compose.service={self.service}"]

    def state(self, conn: Connection) -> ServiceState:
        """The service's container and its state, in one round trip (``docker ps`` then ``docker inspect``)."""
        result = run(conn, ["sh", "-c", self.state_command()], "Reading the service's state", warn=True)
        return read_container(result.stdout)[0]

    def state_command(self) -> str:
        """The service's container id (``id=`` when there is none), then its state: what :meth:`state` reads."""
        inspect = shlex.join(["docker", "inspect", "--format", STATE_FORMAT])
        return f'id=$({shlex.join(self._ps())} | head -n 1); echo "id=$id"; [ -z "$id" ] || {inspect} "$id"'

    def look_command(self) -> str:
        """The container's state, then the heartbeat and the GPUs' use (REMOTE_DIR is the container's /workspace)."""
        return look_command(self.state_command(), self.directory)

    def look(self, conn: Connection) -> Look:
        return look_at(conn, self.state_command(), self.directory, read_container)

    def backstop_args(self) -> list[str]:
        return []  # a pod's backstop stops a native training only; Compose hosts are not RunPod pods


def container_state(data: Mapping[str, Any], container: str) -> ServiceState:
    """``docker inspect`` (:data:`STATE_FORMAT`) of the service's container as a :class:`ServiceState`."""
    state = data["state"]
    return ServiceState(exists=True, running=bool(state.get("Running")), status=state.get("Status", ""),
                        started_at=state.get("StartedAt", ""), image_id=data["image"],
                        restarts=int(data["restarts"]), container=container[:12])


def training_word(state: Mapping[str, Any]) -> str:
    """A container's state in the words of the native supervisor (:class:`~deploy.runtimes.base.Look`).

    ``restart: on-failure`` restarts a crash, so a container that stays exited has finished (0), was
    stopped (:data:`STOPPED_CODES`) or failed otherwise.
    """
    status = str(state.get("Status") or "")
    if status == "created":
        return "starting"
    if status == "removing":
        return "stopped"
    if status != "exited":
        return status or "absent"  # running, restarting, paused, dead
    code = state.get("ExitCode")
    return "exited" if code == 0 else "stopped" if code in STOPPED_CODES else "failed"


def read_container(output: str) -> tuple[ServiceState, str]:
    """The compose part of a look (:meth:`ComposeProject.look_command`): the service's state and its training word."""
    first, _, rest = output.strip().partition("\n")
    container = first.strip().removeprefix("id=")
    try:
        data = json.loads(rest.strip().splitlines()[-1]) if container and rest.strip() else None
    except ValueError:
        data = None
    try:
        return container_state(data, container), training_word(data["state"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError, AttributeError):  # no container, or docker printed something else
        return ServiceState(exists=False), "absent"


def parse_compose_look(output: str) -> Look:
    """A compose look's output as a :class:`~deploy.runtimes.base.Look`."""
    return parse_look(output, read_container)


def project_for(command: str, remote_dir: str, gpu: bool, name: str | None = None) -> ComposeProject:
    """The project deploy runs: the service file, plus the GPU file when the host has GPUs."""
    files = (SERVICE_FILE, GPU_FILE) if gpu else (SERVICE_FILE,)
    project = name or "gpu-deploy-" + (posixpath.basename(remote_dir.rstrip("/")) or "train")
    return ComposeProject(command=command, directory=remote_dir, files=files, name=_project_name(project))


def _project_name(text: str) -> str:
    # Compose project names: lowercase letters, digits, dashes and underscores.
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())
    return cleaned.strip("-_") or "gpu-deploy"
