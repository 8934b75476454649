"""Pure decisions about pods: which GPU types to try in which order, what to create, what it costs.

Nothing here talks to RunPod or SSH: the API's answers come in as records (:mod:`deploy.pods.models`)
and plans go out as data, so every rule (fallback order, the price cap, the project's name prefix,
whether a pod may be terminated) is a unit test.

Example::

    options = PodOptions.from_settings(settings)
    plan = plan_up(options, gpus, name="gpu-deploy-piper-3f2a9c", public_key=key)
    for request in plan.attempts:      # the first with capacity wins
        ...
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import ConfigError
from deploy.pods.models import EXITED, GpuType, Pod, PodError, PodRequest
from deploy.pods.naming import NAME_ROOT, belongs
from deploy.settings import Settings


# RunPod bills a pod's volume disk at $0.10/GB/month while the pod runs and $0.20/GB/month while it is
# stopped; the container disk only while it runs ($0.10/GB/month). https://docs.runpod.io/pods/storage/types
STOPPED_VOLUME_PER_GB_MONTH = 0.20
DAYS_PER_MONTH = 30

# podFindAndDeployOnDemand's answer when no machine fits ("There are no longer any instances available
# with the requested specifications. Please refresh and try again."); the disk variant says "with enough
# disk space", resume says "does not have the resources".
_CAPACITY = re.compile(r"no longer any instances available|not have the resources|no available instances", re.I)


def split_list(text: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: the comma-separated settings."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


@dataclass(frozen=True)
class PodOptions:
    """The pod settings, parsed: what every create call of a run shares."""

    gpu_types: tuple[str, ...]
    gpu_count: int = 1
    cloud_type: str = "ALL"
    data_centers: tuple[str, ...] = ()
    container_disk_gb: int = 20
    volume_gb: int = 50
    image: str = ""
    max_price_per_hour: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "PodOptions":
        gpu_types = split_list(settings.pod_gpu_types)
        if not gpu_types:
            raise ConfigError("POD_GPU_TYPES is empty; name at least one GPU type (fab pods.gpus lists them).")
        return cls(gpu_types=gpu_types, gpu_count=settings.pod_gpu_count, cloud_type=settings.pod_cloud_type,
                   data_centers=split_list(settings.pod_data_centers),
                   container_disk_gb=settings.pod_container_disk_gb, volume_gb=settings.pod_volume_gb,
                   image=settings.pod_image, max_price_per_hour=settings.max_price_per_hour)


def is_capacity_error(message: str) -> bool:
    """True when RunPod's error means "no machine right now" (try the next GPU type), not a bad request."""
    return bool(_CAPACITY.search(message))


def find_gpu(gpus: Sequence[GpuType], wanted: str) -> GpuType | None:
    """The GPU type by its id ("NVIDIA L40S") or display name ("L40S"), ignoring case."""
    key = wanted.strip().lower()
    for gpu in gpus:
        if key in (gpu.id.lower(), gpu.name.lower()):
            return gpu
    return None


@dataclass(frozen=True)
class UpPlan:
    """The create calls to try, in order (first with capacity wins), and the GPU types left out, with why."""

    attempts: tuple[PodRequest, ...]
    prices: tuple[float, ...]
    refused: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        out = [f"try {i + 1}: {r.describe()} at ${p:.2f}/h" for i, (r, p) in enumerate(zip(self.attempts, self.prices))]
        return out + [f"skip: {why}" for why in self.refused]


def plan_up(options: PodOptions, gpus: Sequence[GpuType], name: str, public_key: str) -> UpPlan:
    """The ordered create calls for one pod: each GPU type of the list in each data center (or any).

    Unknown GPU types are an error naming them; types above MAX_PRICE_PER_HOUR or not offered on the
    cloud type are left out, and if nothing is left the error names each and why.
    """
    unknown = [wanted for wanted in options.gpu_types if find_gpu(gpus, wanted) is None]
    if unknown:
        raise ConfigError(f"Unknown GPU type{'s' if len(unknown) > 1 else ''} in POD_GPU_TYPES: "
                          f"{', '.join(unknown)}; fab pods.gpus lists the types RunPod offers.")
    attempts: list[PodRequest] = []
    prices: list[float] = []
    refused: list[str] = []
    for wanted in dict.fromkeys(options.gpu_types):
        gpu = find_gpu(gpus, wanted)
        assert gpu is not None
        per_gpu = gpu.price(options.cloud_type)
        if per_gpu is None:
            refused.append(f"{gpu.id} is not offered on the {options.cloud_type.lower()} cloud")
            continue
        price = round(per_gpu * options.gpu_count, 4)
        if options.max_price_per_hour is not None and price > options.max_price_per_hour:
            refused.append(f"{gpu.id} costs ${price:.2f}/h, above MAX_PRICE_PER_HOUR=${options.max_price_per_hour:.2f}")
            continue
        for data_center in options.data_centers or (None,):
            attempts.append(PodRequest(
                name=name, image=options.image, gpu_type=gpu.id, gpu_count=options.gpu_count,
                cloud_type=options.cloud_type, data_center=data_center, container_disk_gb=options.container_disk_gb,
                volume_gb=options.volume_gb, public_key=public_key))
            prices.append(price)
    if not attempts:
        raise PodError(f"No GPU type in POD_GPU_TYPES can be used: {'; '.join(refused)}.")
    return UpPlan(tuple(attempts), tuple(prices), tuple(refused))


def read_public_key(key_file: str | None, private_key: str | None) -> str:
    """The operator's SSH public key text: POD_PUBLIC_KEY, else RUNPOD_SSH_KEY + ".pub"."""
    path = key_file or (f"{private_key}.pub" if private_key else None)
    if path is None:
        raise ConfigError("No SSH public key for the pod: set POD_PUBLIC_KEY, or RUNPOD_SSH_KEY (its .pub is used).")
    file = Path(path).expanduser()
    try:
        text = file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"Cannot read the SSH public key {file} ({exc.strerror or exc}); check POD_PUBLIC_KEY "
                          "or RUNPOD_SSH_KEY.") from None
    if not re.match(r"^(ssh-|ecdsa-|sk-)\S+ [A-Za-z0-9+/=]+( \S.*)?$", text) or "\n" in text or '"' in text:
        raise ConfigError(f"{file} is not one OpenSSH public key line (ssh-ed25519 AAAA... comment).")
    return text


# --------------------------------------------------------------------------- listing and cost


def project_pods(pods: Iterable[Pod], project: str, recorded: Iterable[str] = ()) -> list[Pod]:
    """The project's pods: named with exactly its id (:mod:`deploy.pods.naming`), or recorded by id at create."""
    ids = set(recorded)
    return sorted((p for p in pods if p.id in ids or belongs(p.name, project)), key=lambda p: p.name)


def spend_so_far(pod: Pod) -> float:
    """Dollars the pod's current run has cost: uptime times its $/h (RunPod bills running pods by the second)."""
    return pod.uptime_seconds / 3600 * pod.cost_per_hr


def stopped_volume_per_day(pod: Pod) -> float:
    """What a stopped pod still bills each day: its volume disk at the stopped rate. Zero for a running pod."""
    if pod.status != EXITED:
        return 0.0
    return pod.volume_gb * STOPPED_VOLUME_PER_GB_MONTH / DAYS_PER_MONTH


def choose_pod(pods: Sequence[Pod], pod_id: str | None, project: str, recorded: Iterable[str] = ()) -> Pod:
    """The pod ``fab pods.down`` acts on: the one named (id or name), else the project's only pod."""
    if pod_id:
        for pod in pods:
            if pod_id in (pod.id, pod.name):
                return pod
        raise PodError(f"No pod {pod_id} in this RunPod account; fab pods lists the project's pods.")
    mine = project_pods(pods, project, recorded)
    if not mine:
        raise PodError(f"This project has no pods (none named {NAME_ROOT}-{project}-*); nothing to do.")
    if len(mine) > 1:
        raise PodError(f"This project has {len(mine)} pods ({', '.join(p.id for p in mine)}); name the one to act on.")
    return mine[0]


@dataclass(frozen=True)
class CheckpointVerdict:
    """May the pod's volume go? ``safe`` is False when the pod holds a checkpoint the bucket lacks."""

    safe: bool
    reason: str
    hint: str = "wait for the upload"
    """What the operator can do instead of forcing."""


def judge_termination(on_pod: tuple[Sequence[int], int] | None, s3_step: int | None, s3_age: str | None,
                      unreachable: str = "") -> CheckpointVerdict:
    """May the pod's volume go? ``on_pod``: the steps of its checkpoint files and how many journal entries
    wait for upload, or None when the pod cannot be reached (then it is not safe: nobody can tell)."""
    in_s3 = (f"the newest checkpoint in S3 is step {s3_step}, uploaded {s3_age}" if s3_step is not None
             else "there is no checkpoint in S3")
    if on_pod is None:
        return CheckpointVerdict(False, f"the pod is {unreachable or 'unreachable'}, so its checkpoints cannot be "
                                        f"compared with S3 ({in_s3})", "resume it in RunPod's console to check")
    pod_steps, pending_uploads = on_pod
    if pending_uploads:
        return CheckpointVerdict(False, f"{pending_uploads} checkpoint{'s are' if pending_uploads > 1 else ' is'} "
                                        f"staged on the pod but not yet in S3 ({in_s3})")
    newest = max(pod_steps, default=None)
    if newest is not None and (s3_step is None or newest > s3_step):
        return CheckpointVerdict(False, f"the newest checkpoint on the pod (step {newest}) is not in S3 ({in_s3})")
    return CheckpointVerdict(True, in_s3)
