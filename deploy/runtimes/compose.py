"""The training service under Compose on a host: v2 (`docker compose`) or v1 (`docker-compose`).

Commands are built here as strings and run through any runner with ``.run()`` (a Fabric
Connection, an invoke Context). Nothing secret is ever part of them: the service reads its
settings from ``REMOTE_DIR/.env`` (``env_file``), which Compose also uses for interpolation.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import HostError

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_FILE = "docker-compose.runpod.yml"
GPU_FILE = "docker-compose.gpu.yml"
SERVICE = "train"
STOP_TIMEOUT = 120  # seconds Compose waits after SIGTERM; longer than the uploader's flush deadline


def compose_source(name: str) -> Path:
    """A compose file shipped with the project (beside this package when installed from a clone)."""
    path = REPO_ROOT / name
    if not path.is_file():
        raise HostError(f"The compose file {path} is missing from the project checkout.")
    return path


@dataclass(frozen=True)
class ServiceState:
    """The training container as Compose left it."""

    exists: bool
    running: bool = False
    status: str = "absent"
    started_at: str = ""
    image_id: str = ""
    restarts: int = 0
    container: str = ""


@dataclass(frozen=True)
class ComposeProject:
    """One Compose project in ``directory`` on a host."""

    command: str
    directory: str
    files: tuple[str, ...]
    name: str
    service: str = SERVICE

    def cmd(self, *args: str) -> str:
        files = " ".join(f"-f {shlex.quote(f)}" for f in self.files)
        return (f"cd {shlex.quote(self.directory)} && {self.command} -p {shlex.quote(self.name)} {files} "
                + " ".join(args))

    def _run(self, conn, *args: str, what: str):
        result = conn.run(self.cmd(*args), hide=True, warn=True, in_stream=False)
        if not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise HostError(f"`{self.command} {what}` failed in {self.directory}: "
                            f"{detail[-1] if detail else 'exit ' + str(result.exited)}")
        return result

    def up(self, conn, recreate: bool = False) -> None:
        self._run(conn, "up", "-d", *(["--force-recreate"] if recreate else []), self.service, what="up")

    def stop(self, conn, timeout: int = STOP_TIMEOUT) -> None:
        self._run(conn, "stop", "-t", str(timeout), self.service, what="stop")

    def logs(self, conn, tail: int = 100) -> str:
        return self._run(conn, "logs", "--no-color", f"--tail={tail}", self.service, what="logs").stdout

    def logs_command(self, tail: int = 100, follow: bool = False) -> str:
        return self.cmd("logs", "--no-color", f"--tail={tail}", *(["-f"] if follow else []), self.service)

    def config_check(self, conn) -> None:
        self._run(conn, "config", "-q", what="config")

    def state(self, conn) -> ServiceState:
        label = f"label=com.docker.compose.project={self.name}"
        service = f"label=com.docker.compose.service={self.service}"
        ids = conn.run(f"docker ps -aq --filter {shlex.quote(label)} --filter {shlex.quote(service)}",
                       hide=True, warn=True, in_stream=False).stdout.split()
        if not ids:
            return ServiceState(exists=False)
        fmt = '{"state": {{json .State}}, "image": {{json .Image}}, "restarts": {{.RestartCount}}}'
        out = conn.run(f"docker inspect --format {shlex.quote(fmt)} {ids[0]}", hide=True, warn=True,
                       in_stream=False)
        if not out.ok:
            return ServiceState(exists=False)
        data = json.loads(out.stdout)
        state = data["state"]
        return ServiceState(exists=True, running=bool(state.get("Running")), status=state.get("Status", ""),
                            started_at=state.get("StartedAt", ""), image_id=data["image"],
                            restarts=int(data["restarts"]), container=ids[0][:12])


def project_for(command: str, remote_dir: str, gpu: bool, name: str | None = None) -> ComposeProject:
    """The project deploy runs: the service file, plus the GPU file when the host has GPUs."""
    files = (SERVICE_FILE, GPU_FILE) if gpu else (SERVICE_FILE,)
    project = name or "gpu-deploy-" + (posixpath.basename(remote_dir.rstrip("/")) or "train")
    return ComposeProject(command=command, directory=remote_dir, files=files, name=_project_name(project))


def _project_name(text: str) -> str:
    # Compose project names: lowercase letters, digits, dashes and underscores.
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())
    return cleaned.strip("-_") or "gpu-deploy"
