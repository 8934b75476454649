"""What a host has: one shell script (deploy/remote/probe.sh) run over SSH, its `key=value` lines parsed into facts.

Parsing is pure (unit-tested on captured output); deciding what is missing for a runtime is pure too,
and each problem is one sentence that says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deploy.errors import HostError
from deploy.hosts.remote import cause, program_source, run, where

if TYPE_CHECKING:
    from fabric import Connection

NATIVE_MARKER = ".gpu-deploy/supervisor.py"
"""A native deploy (deploy.runtimes.native) keeps its supervisor here under REMOTE_DIR; the probe looks for it."""

@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mb: int
    driver: str
    utilization: int | None = None
    memory_used_mb: int | None = None


@dataclass(frozen=True)
class HostFacts:
    """What the probe found on one host."""

    os: str = ""
    kernel: str = ""
    arch: str = ""
    is_root: bool = False
    cpus: int = 0
    mem_kb: int = 0
    shm_kb: int = 0
    gpus: tuple[Gpu, ...] = ()
    docker_client: bool = False
    docker: str = ""  # server version; empty when no engine answers
    compose_v2: str = ""
    compose_v1: str = ""  # the standalone docker-compose command: 1.x, or 2.x where a distribution packs v2 so
    runtimes: tuple[str, ...] = ()
    python3: str = ""
    tools: frozenset[str] = field(default_factory=frozenset)
    disk_dir: str = ""
    disk_free_kb: int = 0
    remote_dir_exists: bool = False
    native: bool = False  # REMOTE_DIR holds a native deploy (no Docker: deploy.runtimes.native)

    @property
    def compose_command(self) -> str | None:
        """The Compose to use: v2 (`docker compose`) preferred, v1 (`docker-compose`) accepted."""
        if self.compose_v2:
            return "docker compose"
        if self.compose_v1:
            return "docker-compose"
        return None

    @property
    def nvidia_runtime(self) -> bool:
        return "nvidia" in self.runtimes

    def report(self) -> list[str]:
        """A short human report, one line per fact."""
        gpus = ", ".join(f"{g.name} {g.memory_mb // 1024} GB" for g in self.gpus) or "none"
        driver = self.gpus[0].driver if self.gpus else "-"
        # By command, not by generation: a standalone docker-compose may be v2 too (Debian trixie's 2.26).
        compose = (f"docker compose {self.compose_v2}" if self.compose_v2 else
                   f"docker-compose {self.compose_v1}" if self.compose_v1 else "none")
        return [
            f"os        {self.os} ({self.arch}, kernel {self.kernel})",
            f"gpus      {gpus} (driver {driver})",
            f"docker    {self.docker or ('client only, no engine' if self.docker_client else 'none')}",
            f"compose   {compose}",
            f"nvidia    {'runtime present' if self.nvidia_runtime else 'no container runtime'}",
            f"disk      {self.disk_free_kb / 1024 / 1024:.1f} GB free at {self.disk_dir}",
            f"python3   {self.python3 or 'none'}",
        ]


def _int(value: str) -> int:
    try:
        return int(float(value.strip()))
    except ValueError:
        return 0


def parse_facts(output: str) -> HostFacts:
    """Parse the probe script's ``key=value`` lines."""
    values: dict[str, str] = {}
    gpus: list[Gpu] = []
    tools: set[str] = set()
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if key == "gpu":
            parts = [p.strip() for p in value.split(",")]
            if len(parts) >= 3:
                extra = [(_int(p) if p not in ("", "[N/A]", "N/A") else None) for p in parts[3:5]]
                extra += [None] * (2 - len(extra))
                gpus.append(Gpu(parts[0], _int(parts[1]), parts[2], extra[0], extra[1]))
        elif key == "tool":
            tools.add(value)
        else:
            values[key] = value
    return HostFacts(
        os=values.get("os", ""), kernel=values.get("kernel", ""), arch=values.get("arch", ""),
        is_root=values.get("uid") == "0", cpus=_int(values.get("cpus", "0")),
        mem_kb=_int(values.get("mem_kb", "0")), shm_kb=_int(values.get("shm_kb", "0")),
        gpus=tuple(gpus), docker_client=values.get("docker_client") == "1",
        docker=values.get("docker", ""), compose_v2=values.get("compose_v2", ""),
        compose_v1=values.get("compose_v1", ""), runtimes=tuple(values.get("runtimes", "").split()),
        python3=values.get("python3", ""), tools=frozenset(tools), disk_dir=values.get("disk_dir", ""),
        disk_free_kb=_int(values.get("disk_free_kb", "0")),
        remote_dir_exists=values.get("remote_dir_exists") == "1", native=values.get("native") == "1",
    )


def probe(conn: Connection, remote_dir: str, warm_native: str = "", warm_compose: str = "") -> HostFacts:
    """Run the probe on ``conn`` (a Fabric Connection or an invoke Context).

    ``warm_native`` and ``warm_compose``: a shell line the probe starts first, detached, when REMOTE_DIR holds a
    native deploy (the first) or anything else (the second): a deploy's warm-ahead, in the probe's round trip.
    """
    # The script holds no secret, so it may travel as an argument (stdin through invoke is slow).
    argv = ["sh", "-c", program_source("probe.sh"), "probe.sh", remote_dir, NATIVE_MARKER, warm_native, warm_compose]
    result = run(conn, argv, "The probe", warn=True)
    if result.exited not in (0, None) and "os=" not in result.stdout:
        raise HostError(f"The probe failed on {where(conn)}: {cause(result.stderr) or 'exit ' + str(result.exited)}")
    return parse_facts(result.stdout)


def compose_problems(facts: HostFacts, image_bytes: int = 0, need_gpu: bool = False) -> list[str]:
    """What stops a compose deploy on this host, each as one sentence that says what to do."""
    problems: list[str] = []
    if not facts.docker:
        if facts.docker_client:
            problems.append("The host has the docker client but no running Docker engine; start it "
                            "(systemctl start docker) or deploy with --runtime=native.")
        else:
            problems.append("The host has no Docker engine (RunPod pods cannot run Docker); use a VM with "
                            "Docker, or deploy with --runtime=native.")
    elif not facts.compose_command:
        problems.append("The host has Docker but no Compose; install the docker-compose-plugin (v2) or docker-compose.")
    if need_gpu and facts.gpus and not facts.nvidia_runtime and facts.docker:
        problems.append("The host has GPUs but Docker has no nvidia runtime; install nvidia-container-toolkit "
                        "and restart Docker.")
    if image_bytes and facts.disk_free_kb and facts.disk_free_kb * 1024 < 2 * image_bytes:
        problems.append(f"Only {facts.disk_free_kb / 1024 / 1024:.1f} GB free at {facts.disk_dir}; the image needs "
                        f"about {2 * image_bytes / 1e9:.1f} GB while it loads: free disk or use a larger volume.")
    return problems
