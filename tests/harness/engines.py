"""A second Docker engine beside the system's, for the tests: Docker 26 with Compose v2 (Debian trixie's packages).

``scripts/bootstrap`` unpacks trixie's docker.io, docker-cli and docker-compose into ``.engines/docker26/root``.
:class:`Engine` starts that dockerd with its own socket, data root, exec root, pidfile, containerd (the one
dockerd manages, under its exec root) and bridge. Binaries trixie builds against a newer glibc come from the
system: its runc, containerd and containerd-shim are found on the system PATH dockerd is given.

It must leave the system engine alone:

- its own bridge, made here: dockerd with ``--bridge=none`` deletes the system's ``docker0``;
- no ``default-address-pools``: a dockerd restarted on its data root with them set deletes the link named
  ``docker0`` whatever its own bridge is (moby's configureNetworking, "clear stale bridge network");
- no iptables: a dockerd that starts rewrites the DOCKER chains, which hold the system engine's published
  ports; a port published on 127.0.0.1 goes through docker-proxy instead;
- ip_forward left as it is.

The test processes on this machine (pytest-xdist workers, a second session) share one engine: under a
machine-wide lock each registers itself; the first starts the engine, the last one out stops it and removes
its bridge. An engine left by a run that crashed (nobody alive uses it) is stopped before a new start. The
data root stays between sessions, so a second session finds the layers it loaded before.

Example::

    engine = DOCKER26.acquire(log=tmp / "dockerd.log")
    engine.server_version()          # "26.1.5+dfsg1"
    engine.session_env()             # DOCKER_HOST and DOCKER_CONFIG for a shell that should use it
    engine.release()
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy.dev.locks import machine_lock
from deploy.dev.waiting import WaitFailed, wait_until

REPO = Path(__file__).resolve().parents[2]
STATE_ROOT = Path("/var/tmp/gpu-deploy-engines")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class EngineError(RuntimeError):
    """The second engine cannot start here; the message is one sentence that says why."""


def _alive(pid: int) -> bool:
    """The process runs (a zombie does not; ours is reaped on the way)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: another test process started it
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _pid_in(path: Path, command: str) -> int | None:
    """The live process whose pid ``path`` holds, if it runs ``command``."""
    try:
        pid = int(path.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == command and _alive(pid) else None


def _mount_points(under: str) -> list[str]:
    """Mount points below the folder ``under`` (with its trailing slash)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [p for p in (line.split()[4] for line in lines) if p.startswith(under)]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Engine:
    """One extra dockerd: where its packages are unpacked, its bridge and address, and its state folder."""

    name: str
    root: Path
    bridge: str
    address: str  # the bridge's, with its prefix: containers on the default network get addresses from it
    state: Path

    @property
    def socket(self) -> Path:
        return self.state / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def docker(self) -> Path:
        return self.root / "usr/bin/docker"

    @property
    def dockerd(self) -> Path:
        return self.root / "usr/sbin/dockerd"

    @property
    def compose_plugin(self) -> Path:
        return self.root / "usr/libexec/docker/cli-plugins/docker-compose"

    @property
    def config_dir(self) -> Path:
        """The DOCKER_CONFIG of its users: its Compose v2 plugin in ``cli-plugins``."""
        return self.state / "config"

    @property
    def pidfile(self) -> Path:
        return self.state / "docker.pid"

    @property
    def users(self) -> Path:
        return self.state / "users"

    def unpacked(self) -> bool:
        return all(p.is_file() for p in (self.dockerd, self.docker, self.compose_plugin))

    def session_path(self) -> str:
        """A PATH on which its docker and its standalone ``docker-compose`` (v2) come first."""
        return f"{self.root}/usr/bin:{SYSTEM_PATH}"

    def session_env(self) -> dict[str, str]:
        """What a shell needs to use this engine and find ``docker compose`` (the plugin)."""
        return {"DOCKER_HOST": self.url, "DOCKER_CONFIG": str(self.config_dir)}

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Its own docker CLI against it."""
        return subprocess.run([str(self.docker), *args], capture_output=True, text=True, timeout=timeout,
                              env={"PATH": self.session_path(), **self.session_env()}, stdin=subprocess.DEVNULL)

    def server_version(self) -> str:
        """The engine's version once ``docker info`` answers; empty before."""
        try:
            info = self.cli("info", "--format", "{{.ServerVersion}}", timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        return info.stdout.strip() if info.returncode == 0 else ""

    def client(self):
        """The docker SDK's client for it (the operator side's ``docker.from_env()`` with DOCKER_HOST set)."""
        import docker

        return docker.DockerClient(base_url=self.url, timeout=600)

    # ------------------------------------------------------------------------- shared between processes

    def acquire(self, log: Path) -> "Engine":
        """Use the engine: start it (output to ``log``) unless a live test process already did."""
        with machine_lock(f"engine-{self.name}"):
            users = self._live_users()
            if not (users and self.server_version()):
                self._stop()  # a crashed run's engine, or one that no longer answers
                self._start(log)
            (self.users / str(os.getpid())).write_text(f"{log}\n")
        return self

    def release(self) -> None:
        """Stop using it; the last user stops the engine and removes its bridge."""
        with machine_lock(f"engine-{self.name}"):
            (self.users / str(os.getpid())).unlink(missing_ok=True)
            if not self._live_users():
                self._stop()

    def _live_users(self) -> list[int]:
        self.users.mkdir(parents=True, exist_ok=True)
        live = []
        for entry in self.users.iterdir():
            if entry.name.isdigit() and _alive(int(entry.name)):
                live.append(int(entry.name))
            else:
                entry.unlink(missing_ok=True)
        return live

    # ------------------------------------------------------------------------- start and stop

    def _start(self, log: Path) -> None:
        if not self.unpacked():
            raise EngineError(f"{self.name} is not unpacked in {self.root}; run scripts/bootstrap.")
        for tool in ("ip", "containerd", "containerd-shim-runc-v2", "runc", "docker-init"):
            if shutil.which(tool, path=SYSTEM_PATH) is None:
                raise EngineError(f"{self.name} needs the system's {tool}; run scripts/bootstrap.")
        self._claim_address()
        plugins = self.config_dir / "cli-plugins"
        for folder in (self.state / "data", self.state / "exec", plugins):
            folder.mkdir(parents=True, exist_ok=True)
        (plugins / "docker-compose").unlink(missing_ok=True)
        (plugins / "docker-compose").symlink_to(self.compose_plugin)
        config = {
            "hosts": [self.url], "pidfile": str(self.pidfile),
            "data-root": str(self.state / "data"), "exec-root": str(self.state / "exec"),
            "bridge": self.bridge, "iptables": False, "ip6tables": False, "ip-forward": False, "ip-masq": False,
            "userland-proxy": True, "userland-proxy-path": str(self.root / "usr/sbin/docker-proxy"),
            "init-path": shutil.which("docker-init", path=SYSTEM_PATH),  # trixie's links to a tini it lacks
        }
        (self.state / "daemon.json").write_text(json.dumps(config, indent=2) + "\n")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:  # detached: it outlives this process when another test process uses it
            proc = subprocess.Popen([str(self.dockerd), "--config-file", str(self.state / "daemon.json")],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={"PATH": SYSTEM_PATH}, cwd=self.state, start_new_session=True)
        try:
            wait_until(self.server_version, 60, f"{self.name} (dockerd) to answer on {self.socket}", proc=proc,
                       log=log)
        except WaitFailed:
            self._stop()
            raise
        self._remove_containers()  # a crashed run's: nobody uses the engine yet, and a restart policy revives them

    def _remove_containers(self) -> None:
        ids = self.cli("ps", "-aq").stdout.split()
        if ids:
            self.cli("rm", "-f", *ids, timeout=120)

    def _claim_address(self) -> None:
        """Make the bridge (or keep a leftover of ours), refusing an address another interface already uses."""
        network = ipaddress.ip_interface(self.address).network
        for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
            fields = line.split()
            device, inet = fields[1], fields[3]
            if device != self.bridge and ipaddress.ip_interface(inet).network.overlaps(network):
                raise EngineError(f"{device} already uses {inet}, which overlaps {self.name}'s bridge {self.address}.")
        if _ip("link", "show", self.bridge).returncode != 0:
            made = _ip("link", "add", self.bridge, "type", "bridge")
            if made.returncode != 0:
                raise EngineError(f"Could not make the bridge {self.bridge}: {made.stderr.strip()}.")
        _ip("addr", "replace", self.address, "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def _stop(self) -> None:
        """Stop the engine (its containers first, so it does not wait out their stop timeouts) and remove its bridge."""
        pid = _pid_in(self.pidfile, "dockerd")
        if pid is not None:
            if self.server_version():
                self._remove_containers()
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda: not _alive(pid), 60, f"{self.name} (dockerd {pid}) to stop")
            except WaitFailed:
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda: not _alive(pid), 10, f"{self.name} (dockerd {pid}) to die")
        containerd = _pid_in(self.state / "exec/containerd/containerd.pid", "containerd")
        if containerd is not None:  # left by a dockerd that was killed
            os.kill(containerd, signal.SIGKILL)
        exec_root = f"{self.state / 'exec'}/"
        for point in sorted(_mount_points(exec_root), reverse=True):  # the host-network namespace dockerd leaves
            subprocess.run(["umount", point], capture_output=True, timeout=30)
        if _ip("link", "show", self.bridge).returncode == 0:
            _ip("link", "del", self.bridge)
        for path in (self.socket, self.pidfile):
            path.unlink(missing_ok=True)


DOCKER26 = Engine(name="docker26", root=REPO / ".engines/docker26/root", bridge="gdtest26",
                  address="10.226.26.1/24", state=STATE_ROOT / "docker26")
"""Debian trixie's Docker 26.1 with Compose v2.26, as scripts/bootstrap unpacks it."""
