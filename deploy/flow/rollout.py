"""`deploy-runpod` as a plan and its execution, for the compose runtime (deploy.runtimes.native: hosts without Docker).

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

from deploy.runtimes.compose import GPU_FILE, SERVICE_FILE, ComposeProject, ServiceState, compose_source, project_for
from deploy.hosts.dataset import StagePlan, execute_stage
from deploy.hosts.envfile import EnvShipment, remote_env_digest, ship_env
from deploy.errors import HostError
from deploy.hosts import HostSpec
from deploy.hosts.probe import HostFacts, compose_problems, probe
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


def gather(conn, desired: DesiredRun, storage: Storage | None = None, facts: HostFacts | None = None) -> HostState:
    """Read the host: probe (unless ``facts`` has it), image, .env and compose file digests, service, dataset plan."""
    from deploy.hosts.dataset import plan_for_host

    facts = facts or probe(conn, desired.remote_dir)
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
    if facts.native:
        problems += (f"{desired.remote_dir} holds a native deploy (no Docker); deploy there with --runtime=native "
                     "(or auto), or choose another REMOTE_DIR for compose.",)
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
    runtime: str = "compose"


def execute(conn, plan: DeployPlan, images: ImageSource, storage: Storage | None = None,
            wait: float = 300.0, log: Callable[[str], None] = lambda s: None, start: bool = True) -> DeployResult:
    """Perform the plan's steps in order; then wait for training to start.

    ``start=False`` leaves the start step to the caller (a multi-node group starts rank 0 first).
    """
    if plan.problems:
        raise HostError(f"{plan.spec.host}:{plan.spec.port}: {plan.problems[0]}")
    started = time.monotonic()
    d = plan.desired
    done: list[str] = []
    for step in plan.steps:
        if step.name in ("start", "restart") and not start:
            continue
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
            from deploy.hosts.dataset import plan_for_host

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
        from deploy.images.store import ImageStore

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


def resolve_image(images: BucketImages, ref: str, runtime: str) -> tuple[str, int, str | None]:
    """The image id and size in the bucket, and a problem for compose hosts when it is missing.

    Native hosts need no image, so ``native`` skips the lookup and ``auto`` defers a missing image
    to the hosts that turn out to run compose.
    """
    if runtime == "native":
        return "", 0, None
    try:
        image_id, size = images.image_id(ref)
    except HostError as exc:
        if runtime == "compose":
            raise
        return "", 0, str(exc)
    return image_id, size, None


def stage_local_dataset(storage: Storage, folder: str, dry_run: bool = False) -> tuple[str, str]:
    """A local dataset folder goes to ``datasets/<folder name>/`` first; returns (name, what happened)."""
    import os

    from deploy.storage import DATASETS
    from deploy.storage.sync import cache_for, plan_upload
    from deploy.storage.sync import execute as execute_sync

    name = os.path.basename(os.path.normpath(folder))
    prefix = storage.key(DATASETS, name)
    cache = cache_for(storage, prefix, folder)
    plan = plan_upload(storage, folder, prefix, cache=cache)
    if dry_run:
        return name, plan.headline()
    return name, execute_sync(storage, plan, cache=cache).summary()


# --------------------------------------------------------------------------- a whole rollout


@dataclass(frozen=True)
class Rollout:
    """One deploy over one or more hosts; with ``num_nodes`` > 1 they train one run together."""

    image_ref: str
    image_id: str
    image_bytes: int
    remote_dir: str
    data_dir: str | None = None
    dataset: str | None = None
    restart: bool = False
    wait: float = 300.0
    num_nodes: int = 1
    master_addr: str | None = None
    master_port: int = 29500
    runtime: str = "auto"  # compose, native or auto (decided per host from the probe: deploy.runtimes.native)
    native_python: str = "python3"
    image_problem: str | None = None  # the image is missing from the bucket: a problem for compose hosts only

    def desired(self, spec: HostSpec, settings, rank: int, devices: int) -> DesiredRun:
        from deploy.hosts.envfile import plan_env

        remote_dir = spec.workdir(self.remote_dir)
        data_dir = self.data_dir or f"{remote_dir}/data"
        extra = {"IMAGE": self.image_ref, "DATA_DIR": data_dir, "ENABLE_S3_SYNC": "1", "CHECKPOINT": "s3"}
        if self.num_nodes > 1:
            extra.update(NUM_NODES=str(self.num_nodes), NODE_RANK=str(rank), DEVICES=str(devices),
                         MASTER_ADDR=self.master_addr or "", MASTER_PORT=str(self.master_port))
        return DesiredRun(image_ref=self.image_ref, image_id=self.image_id, remote_dir=remote_dir,
                          env=plan_env(settings, extra=extra), dataset=self.dataset, data_dir=data_dir,
                          restart=self.restart)


def prepare(conn, spec: HostSpec, rollout: Rollout, settings, rank: int, storage: Storage | None,
            facts: HostFacts | None = None) -> DeployPlan:
    """Gather (read-only) and plan one host; the .env carries its rank and the GPUs the probe found."""
    if rollout.image_problem:
        raise HostError(rollout.image_problem)
    first = rollout.desired(spec, settings, rank, devices=1)
    state = gather(conn, first, storage, facts=facts)
    desired = rollout.desired(spec, settings, rank, devices=max(1, len(state.facts.gpus)))
    return plan_deploy(spec, desired, state, image_bytes=rollout.image_bytes)


RENDEZVOUS_LISTENER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16); s.settimeout(float(sys.argv[2]))
print("listening", flush=True)
try:
    while True:
        s.accept()[0].close()
except OSError:
    pass
"""

RENDEZVOUS_PROBE = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
except OSError as exc:
    print("unreachable: %s" % exc); sys.exit(1)
"""


def check_rendezvous(conns: list, specs: list[HostSpec], addr: str, port: int) -> None:
    """Every other host must reach ``addr:port`` on rank 0 before anything starts.

    Rank 0 listens on the port for a few seconds (nothing listens there before training starts);
    each other host connects to it.
    """
    listener = (f"rm -f /tmp/gpu-deploy-rendezvous.log; nohup python3 -c {shlex.quote(RENDEZVOUS_LISTENER)} {port} 20 "
                "> /tmp/gpu-deploy-rendezvous.log 2>&1 & echo $!")
    pid = conns[0].run(listener, hide=True, in_stream=False).stdout.strip()
    try:
        deadline = time.monotonic() + 10
        while "listening" not in conns[0].run("cat /tmp/gpu-deploy-rendezvous.log", hide=True, warn=True,
                                                 in_stream=False).stdout:
            if time.monotonic() > deadline:
                raise HostError(f"Rank 0 ({specs[0].host}) cannot listen on port {port}; is it in use? "
                                "Choose another MASTER_PORT.")
            time.sleep(0.2)
        for conn, spec in zip(conns[1:], specs[1:]):
            probe_cmd = f"python3 -c {shlex.quote(RENDEZVOUS_PROBE)} {shlex.quote(addr)} {port}"
            if not conn.run(probe_cmd, hide=True, warn=True, in_stream=False).ok:
                raise HostError(f"{spec.host} cannot reach MASTER_ADDR {addr}:{port} on rank 0 ({specs[0].host}); "
                                "set MASTER_ADDR to an address of rank 0 the other hosts can reach (often its "
                                "private network address) and open MASTER_PORT between the hosts.")
    finally:
        conns[0].run(f"kill {pid} 2>/dev/null", hide=True, warn=True, in_stream=False)


def stop_group(conns: list, plans: list[DeployPlan]) -> None:
    """Stop every node still running: a DDP group restarts together, and rank 0 frees MASTER_PORT."""
    for conn, plan in zip(conns, plans):
        if plan.project.state(conn).running:
            plan.project.stop(conn)


def start_group(conns: list, plans: list[DeployPlan], wait: float, log: Callable[[str], None]) -> list[ServiceState]:
    """Start a multi-node group (already stopped: see :func:`stop_group`): rank 0, then the others.

    On a failure every node is stopped again.
    """
    states: list[ServiceState] = []
    try:
        for rank, (conn, plan) in enumerate(zip(conns, plans)):
            log(f"{plan.spec.host}: start rank {rank}")
            plan.project.up(conn, recreate=True)
        for conn, plan in zip(conns, plans):
            try:
                states.append(wait_for_training(conn, plan.project, wait))
            except HostError as exc:
                raise HostError(f"{plan.spec.host}:{plan.spec.port} failed to start: {exc}") from exc
    except HostError:
        for conn, plan in zip(conns, plans):
            plan.project.stop(conn, timeout=30)
        raise
    return states


def deploy_hosts(specs: list[HostSpec], rollout: Rollout, settings, options, storage: Storage, images: ImageSource,
                 dry_run: bool = False, log: Callable[[str], None] = print) -> list:
    """Independent runs on each host, in parallel; every host's outcome is collected.

    Each host runs compose or native (no Docker, e.g. a RunPod pod) as ``rollout.runtime`` and its probe say.
    """
    from deploy.hosts import connect, for_each_host, require_sftp
    from deploy.runtimes.native import choose_runtime, deploy_native

    def work(spec: HostSpec):
        require_sftp(spec)  # .env and code travel over SFTP: refuse RunPod's proxy SSH before connecting
        with connect(spec, options) as conn:
            facts = probe(conn, spec.workdir(rollout.remote_dir))
            runtime, reason = choose_runtime(rollout.runtime, facts)
            if runtime == "native":
                return deploy_native(conn, spec, rollout, settings, options, facts, reason, storage, dry_run, log)
            plan = prepare(conn, spec, rollout, settings, rank=0, storage=storage, facts=facts)
            log("\n".join(plan.describe()))
            if plan.problems:
                raise HostError(f"{spec.host}:{spec.port}: {plan.problems[0]}")
            return None if dry_run else execute(conn, plan, images, storage, wait=rollout.wait, log=log)

    return for_each_host(specs, work)


def deploy_group(specs: list[HostSpec], rollout: Rollout, settings, options, storage: Storage, images: ImageSource,
                 dry_run: bool = False, log: Callable[[str], None] = print) -> list:
    """One run across ``specs`` (rank = position): prepare all, check the rendezvous, start rank 0 first.

    A group starts together: if any node must (re)start, every node restarts from the latest
    checkpoint in S3, since a DDP group cannot take a node back midway.
    """
    from deploy.errors import ConfigError
    from deploy.hosts import Outcome, connect, for_each_host, require_sftp

    if rollout.runtime == "native":
        raise ConfigError("Multi-node runs (NUM_NODES > 1) need the compose runtime; hosts without Docker "
                          "(RunPod pods) train one run per host.")
    for spec in specs:
        require_sftp(spec)
    if len(specs) != rollout.num_nodes:
        raise HostError(f"A {rollout.num_nodes}-node run needs {rollout.num_nodes} hosts; {len(specs)} were given "
                        "(RUNPOD_HOST or --hosts, comma-separated, rank 0 first).")
    conns = [connect(spec, options) for spec in specs]
    try:
        planned = for_each_host(specs, lambda spec: prepare(conns[specs.index(spec)], spec, rollout, settings,
                                                            rank=specs.index(spec), storage=storage))
        for o in planned:
            if o.result is not None:
                log("\n".join(o.result.describe()))
        problems = [Outcome(o.spec, error=o.error or HostError(f"{o.spec.host}:{o.spec.port}: {o.result.problems[0]}"))
                    for o in planned if o.error is not None or o.result.problems]
        if problems:
            return problems + [Outcome(o.spec, error=HostError("not started: another host failed"))
                               for o in planned if o.spec not in {p.spec for p in problems}]
        plans = [o.result for o in planned]
        if dry_run:
            return [Outcome(p.spec) for p in plans]
        restart = rollout.restart or any(p.needs("start") or p.needs("restart") for p in plans)
        prepared = for_each_host(specs, lambda spec: execute(conns[specs.index(spec)], plans[specs.index(spec)],
                                                             images, storage, wait=rollout.wait, log=log,
                                                             start=False))
        if any(o.error for o in prepared) or not restart:
            return prepared
        started = time.monotonic()
        stop_group(conns, plans)
        check_rendezvous(conns, specs, rollout.master_addr or specs[0].host, rollout.master_port)
        states = start_group(conns, plans, rollout.wait, log)
        return [Outcome(o.spec, result=DeployResult(
                    spec=o.spec, done=o.result.done + ("start",), service=state,
                    seconds=o.result.seconds + time.monotonic() - started,
                    follow=f"fab logs --follow --hosts={o.spec}"))
                for o, state in zip(prepared, states)]
    finally:
        for conn in conns:
            conn.close()
