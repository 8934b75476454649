"""What the RunPod API says, as typed records: GPU types, pods, the SSH endpoint of a pod.

The records are built from RunPod's documented GraphQL shapes (``gpuTypes``, ``pod``, ``myself { pods }``)
and nothing else reads those dicts, so a change in the API's shape breaks here, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deploy.errors import DeployError

RUNNING, EXITED, TERMINATED = "RUNNING", "EXITED", "TERMINATED"
SSH_PORT = 22


class PodError(DeployError):
    """The RunPod API refused a request, or a pod did not become usable."""


class NoCapacityError(PodError):
    """RunPod has no machine for this GPU type (and data center) right now."""


class ApiUnreachable(PodError):
    """The API did not answer (a timeout, a dropped connection): a create may or may not have made its pod."""


def cloud_price(cloud_type: str, secure: float | None, community: float | None) -> float | None:
    """The price on ``cloud_type`` (SECURE, COMMUNITY; ALL: the cheaper of those offered), None where not offered."""
    if cloud_type == "SECURE":
        return secure
    if cloud_type == "COMMUNITY":
        return community
    offered = [p for p in (secure, community) if p is not None]
    return min(offered) if offered else None


@dataclass(frozen=True)
class GpuType:
    """One GPU type and its on-demand prices per GPU and hour (None: not offered on that cloud)."""

    id: str
    name: str
    memory_gb: int
    secure_price: float | None = None
    community_price: float | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> "GpuType":
        def price(offered: str, key: str) -> float | None:
            value = raw.get(key)
            return float(value) if raw.get(offered, True) and value else None

        return cls(id=raw["id"], name=raw.get("displayName") or raw["id"], memory_gb=int(raw.get("memoryInGb") or 0),
                   secure_price=price("secureCloud", "securePrice"),
                   community_price=price("communityCloud", "communityPrice"))

    def price(self, cloud_type: str) -> float | None:
        """Dollars per GPU-hour on ``cloud_type``: ALL takes the cheaper cloud that offers it."""
        return cloud_price(cloud_type, self.secure_price, self.community_price)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "memory_gb": self.memory_gb,
                "secure_per_hour": self.secure_price, "community_per_hour": self.community_price}


@dataclass(frozen=True)
class Endpoint:
    """Where the pod's port 22 is reachable: a public IP and the port RunPod mapped it to."""

    ip: str
    port: int

    def host_spec(self, user: str = "root") -> str:
        return f"{user}@{self.ip}:{self.port}"


@dataclass(frozen=True)
class Pod:
    """One pod as the API reports it. ``runtime_ports`` is empty while the image is pulled (runtime null)."""

    id: str
    name: str
    status: str
    gpu: str = ""
    gpu_count: int = 0
    cost_per_hr: float = 0.0
    uptime_seconds: int = 0
    volume_gb: int = 0
    container_disk_gb: int = 0
    image: str = ""
    has_runtime: bool = False
    runtime_ports: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> "Pod":
        runtime = raw.get("runtime") or None
        machine = raw.get("machine") or {}
        return cls(id=raw["id"], name=raw.get("name") or "", status=raw.get("desiredStatus") or "",
                   gpu=machine.get("gpuDisplayName") or "", gpu_count=int(raw.get("gpuCount") or 0),
                   cost_per_hr=float(raw.get("costPerHr") or 0.0), uptime_seconds=int(raw.get("uptimeSeconds") or 0),
                   volume_gb=int(raw.get("volumeInGb") or 0), container_disk_gb=int(raw.get("containerDiskInGb") or 0),
                   image=raw.get("imageName") or "", has_runtime=runtime is not None,
                   runtime_ports=tuple((runtime or {}).get("ports") or ()))

    @property
    def ssh(self) -> Endpoint | None:
        """The public endpoint of port 22, once RunPod reports one (``isIpPublic`` and a public port)."""
        for port in self.runtime_ports:
            if port.get("privatePort") == SSH_PORT and port.get("isIpPublic") and port.get("publicPort"):
                return Endpoint(ip=str(port["ip"]), port=int(port["publicPort"]))
        return None

    @property
    def stage(self) -> str:
        """A word for progress lines: what the pod is doing from the operator's point of view."""
        if self.status == EXITED:
            return "stopped"
        if self.status != RUNNING:
            return self.status.lower() or "unknown"
        if not self.has_runtime:
            return "starting (pulling the image)"
        if self.ssh is None:
            return "running, no public SSH port yet"
        return f"running, SSH at {self.ssh.ip}:{self.ssh.port}"

    def to_dict(self) -> dict[str, Any]:
        ssh = self.ssh
        return {"id": self.id, "name": self.name, "status": self.status, "gpu": self.gpu, "gpu_count": self.gpu_count,
                "cost_per_hour": self.cost_per_hr, "uptime_seconds": self.uptime_seconds, "volume_gb": self.volume_gb,
                "container_disk_gb": self.container_disk_gb, "image": self.image,
                "ssh": ssh.host_spec() if ssh else None}


@dataclass(frozen=True)
class PodRequest:
    """Everything one create call sends: the SDK's ``create_pod`` arguments, one GPU type, one data center."""

    name: str
    image: str
    gpu_type: str
    gpu_count: int
    cloud_type: str
    data_center: str | None
    container_disk_gb: int
    volume_gb: int
    public_key: str = field(repr=False)
    volume_mount_path: str = "/workspace"
    ports: str = f"{SSH_PORT}/tcp"

    def describe(self) -> str:
        where = f" in {self.data_center}" if self.data_center else ""
        return f"{self.gpu_count} x {self.gpu_type} ({self.cloud_type.lower()} cloud{where})"
