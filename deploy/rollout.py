"""`deploy-runpod` as a plan and its execution, for the compose runtime.

Gathering reads the host (probe, files, service state) and changes nothing; planning is pure and
decides the steps; executing performs only the steps the plan marked as needed. Re-running on a
healthy host with the same image and settings plans no step and says so.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from deploy.compose import GPU_FILE, SERVICE_FILE, ComposeProject, ServiceState, compose_source, project_for
from deploy.datastage import StagePlan, execute_stage
from deploy.envship import EnvShipment, remote_env_digest, ship_env
from deploy.errors import HostError
from deploy.hosts import HostSpec
from deploy.probe import HostFacts, compose_problems, probe
from deploy.storage import Storage

SMALL_TOOLS = ("zstd", "curl")
STARTED_MARKER = "entrypoint: running"


class ImageSource(Protocol):
    """Where the training image comes from (the bucket's layer store)."""

    def load_on_host(self, conn, ref: str) -> str:
        """Load ``ref`` on the host behind ``conn``; return the loaded image id."""


@dataclass(frozen=True)
class DesiredRun:
    """What the operator asked for on every host."""

    image_ref: str
    image_id: str
    remote_dir: str
    env: EnvShipment
    dataset: str | None = None
    data_dir: str = ""
    restart: bool = False
    gpu_file: bool | None = None  # None: decided from the probe


@dataclass(frozen=True)
class HostState:
    """What the host has now (read-only gathering)."""

    facts: HostFacts
    host_image_id: str
    env_digest: str | None
    file_digests: dict[str, str]
    service: ServiceState
    dataset_plan: StagePlan | None = None


@dataclass(frozen=True)
class Step:
    name: str
    detail: str


@dataclass(frozen=True)
class DeployPlan:
    spec: HostSpec
    project: ComposeProject
    desired: DesiredRun
    steps: tuple[Step, ...]
    problems: tuple[str, ...] = ()
    facts: HostFacts = field(default_factory=HostFacts)

    @property
    def noop(self) -> bool:
        return not self.steps

    def needs(self, name: str) -> bool:
        return any(s.name == name for s in self.steps)

    def describe(self) -> list[str]:
        d = self.desired
        lines = [
            f"host      {self.spec}",
            f"image     {d.image_ref} ({d.image_id[:19]})",
            f"compose   {self.project.command} -p {self.project.name} " + " ".join(f"-f {f}" for f in self.project.files),
            f"env keys  {', '.join(d.env.keys)}",
        ]
        lines += [f"problem   {p}" for p in self.problems]
        if self.noop and not self.problems:
            lines.append("changes   none: the service runs this image with these settings")
        lines += [f"change    {s.name}: {s.detail}" for s in self.steps]
        return lines


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def compose_files(gpu: bool) -> dict[str, bytes]:
    names = (SERVICE_FILE, GPU_FILE) if gpu else (SERVICE_FILE,)
    return {name: compose_source(name).read_bytes() for name in names}


def gather(conn, desired: DesiredRun, storage: Storage | None = None) -> HostState:
    """Read the host: probe, image, .env and compose file digests, service state, dataset plan."""
    from deploy.datastage import plan_for_host

    facts = probe(conn, desired.remote_dir)
    image = conn.run(f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(desired.image_ref)} 2>/dev/null",
                     hide=True, warn=True, in_stream=False).stdout.strip() if facts.docker else ""
    paths = " ".join(shlex.quote(posixpath.join(desired.remote_dir, n)) for n in (SERVICE_FILE, GPU_FILE))
    sums = conn.run(f"sha256sum {paths} 2>/dev/null", hide=True, warn=True, in_stream=False).stdout
    digests = {posixpath.basename(p): d for d, p in (line.split(None, 1) for line in sums.splitlines() if line)}
    gpu = bool(facts.gpus) if desired.gpu_file is None else desired.gpu_file
    project = project_for(facts.compose_command or "docker compose", desired.remote_dir, gpu)
    service = project.state(conn) if facts.docker else ServiceState(exists=False)
    dataset_plan = None
    if desired.dataset and storage is not None:
        dataset_plan = plan_for_host(conn, storage, desired.dataset, desired.data_dir)
    return HostState(facts=facts, host_image_id=image, env_digest=remote_env_digest(conn, desired.remote_dir),
                     file_digests=digests, service=service, dataset_plan=dataset_plan)


def plan_deploy(spec: HostSpec, desired: DesiredRun, state: HostState, image_bytes: int = 0) -> DeployPlan:
    """Decide the steps from what the host has; pure, so the unit tests check it."""
    facts = state.facts
    gpu = bool(facts.gpus) if desired.gpu_file is None else desired.gpu_file
    project = project_for(facts.compose_command or "docker compose", desired.remote_dir, gpu)
    problems = tuple(compose_problems(facts, image_bytes=0 if state.host_image_id else image_bytes, need_gpu=gpu))
    steps: list[Step] = []
    if not facts.remote_dir_exists:
        steps.append(Step("create-dir", f"create {desired.remote_dir}"))
    missing_tools = [t for t in SMALL_TOOLS if t not in facts.tools]
    if missing_tools and facts.is_root and "apt-get" in facts.tools:
        steps.append(Step("install-tools", f"apt-get install {' '.join(missing_tools)}"))
    env_changed = state.env_digest != desired.env.digest
    if env_changed:
        steps.append(Step("write-env", f".env with {len(desired.env.keys)} keys, mode 0600"))
    image_changed = state.host_image_id != desired.image_id
    if image_changed:
        steps.append(Step("load-image", f"load {desired.image_ref} from S3"))
    if state.dataset_plan is not None and not state.dataset_plan.noop:
        steps.append(Step("stage-dataset", state.dataset_plan.describe()))
    wanted = {n: file_digest(b) for n, b in compose_files(gpu).items()}
    files_changed = any(state.file_digests.get(n) != d for n, d in wanted.items())
    if files_changed:
        steps.append(Step("upload-compose", ", ".join(wanted)))
    running_current = (state.service.running and state.service.image_id == desired.image_id)
    if desired.restart:
        steps.append(Step("restart", "recreate the service (resumes from the latest checkpoint in S3)"))
    elif env_changed or image_changed or files_changed or not running_current:
        why = "not running" if not state.service.running else "image or settings changed"
        steps.append(Step("start", f"{project.command} up -d ({why})"))
    return DeployPlan(spec=spec, project=project, desired=desired, steps=tuple(steps), problems=problems,
                      facts=facts)


@dataclass(frozen=True)
class DeployResult:
    spec: HostSpec
    done: tuple[str, ...]
    service: ServiceState
    seconds: float
    follow: str


def execute(conn, plan: DeployPlan, images: ImageSource, storage: Storage | None = None,
            wait: float = 300.0, log: Callable[[str], None] = lambda s: None) -> DeployResult:
    """Perform the plan's steps in order; then wait for training to start."""
    if plan.problems:
        raise HostError(f"{plan.spec.host}:{plan.spec.port}: {plan.problems[0]}")
    started = time.monotonic()
    d = plan.desired
    done: list[str] = []
    for step in plan.steps:
        log(f"{plan.spec.host}: {step.name}: {step.detail}")
        if step.name == "create-dir":
            conn.run(f"mkdir -p {shlex.quote(d.remote_dir)}", hide=True, in_stream=False)
        elif step.name == "install-tools":
            conn.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                     + " ".join(t for t in SMALL_TOOLS if t not in plan.facts.tools), hide=True, warn=True,
                     in_stream=False)
        elif step.name == "write-env":
            ship_env(conn, d.remote_dir, d.env)
        elif step.name == "load-image":
            loaded = images.load_on_host(conn, d.image_ref)
            if loaded != d.image_id:
                raise HostError(f"The image loaded on {plan.spec.host} is {loaded[:19]}, not {d.image_id[:19]}.")
        elif step.name == "stage-dataset":
            assert storage is not None
            from deploy.datastage import plan_for_host

            execute_stage(conn, storage, plan_for_host(conn, storage, d.dataset or "", d.data_dir))
        elif step.name == "upload-compose":
            sftp = conn.sftp()
            for name, data in compose_files(GPU_FILE in plan.project.files).items():
                with sftp.open(posixpath.join(d.remote_dir, name), "wb") as handle:
                    handle.write(data)
        elif step.name in ("start", "restart"):
            plan.project.up(conn, recreate=step.name == "restart")
        done.append(step.name)
    service = plan.project.state(conn)
    if any(s in done for s in ("start", "restart")):
        service = wait_for_training(conn, plan.project, wait)
    return DeployResult(spec=plan.spec, done=tuple(done), service=service, seconds=time.monotonic() - started,
                        follow=f"fab logs --follow --hosts={plan.spec}")


def wait_for_training(conn, project: ComposeProject, timeout: float) -> ServiceState:
    """Poll until the container runs and the entrypoint has launched training, or fail with its logs."""
    deadline = time.monotonic() + timeout
    state = project.state(conn)
    while time.monotonic() < deadline:
        state = project.state(conn)
        if state.exists and not state.running and state.status in ("exited", "dead"):
            break
        if state.running and STARTED_MARKER in project.logs(conn, tail=200):
            return state
        time.sleep(1)
    tail = project.logs(conn, tail=15) if state.exists else ""
    raise HostError(f"Training did not start within {timeout:.0f} s (container {state.status}); last log lines:\n{tail}")


# --------------------------------------------------------------------------- wiring


class BucketImages:
    """The image comes from the bucket's layer store (``fab image-to-s3`` put it there)."""

    def __init__(self, storage: Storage, log: Callable[[str], None] = lambda s: None) -> None:
        self.storage = storage
        self.log = log

    def image_id(self, ref: str) -> tuple[str, int]:
        """The image id and uncompressed size the bucket holds for ``ref``."""
        from deploy.images import ImageRef
        from deploy.imagestore import ImageStore

        parsed = ImageRef.parse(ref)
        manifest = ImageStore(self.storage).read_manifest(parsed.name, parsed.tag)
        if manifest is None:
            raise HostError(f"The bucket has no image {ref} under {self.storage.url()}; push it first with "
                            f"`fab image-to-s3 --image={ref}`.")
        return manifest.image_id, sum(layer.size for layer in manifest.layers)

    def load_on_host(self, conn, ref: str) -> str:
        from deploy.images import pull

        result = pull(conn, self.storage, ref, where=f"{conn.host}:{conn.port}")
        self.log(result.summary())
        return result.image_id or ""


def stage_local_dataset(storage: Storage, folder: str, dry_run: bool = False) -> tuple[str, str]:
    """A local dataset folder goes to ``datasets/<folder name>/`` first; returns (name, what happened)."""
    import os

    from deploy.storage import DATASETS
    from deploy.sync import cache_for, plan_upload
    from deploy.sync import execute as execute_sync

    name = os.path.basename(os.path.normpath(folder))
    prefix = storage.key(DATASETS, name)
    cache = cache_for(storage, prefix, folder)
    plan = plan_upload(storage, folder, prefix, cache=cache)
    if dry_run:
        return name, plan.headline()
    return name, execute_sync(storage, plan, cache=cache).summary()
