"""`deploy-runpod`: one flow for every host and runtime: probe -> gather -> plan (printed) -> execute.

The flow probes the host, chooses its runtime (deploy.flow.choose), lets the runtime read the host
(``gather``, read-only) and decide the steps (``plan``, pure), adds the runtime-neutral steps it
owns (staging the dataset; taking the run's lease), prints the plan (``--dry-run`` stops here) and
carries each step out by the runtime's handler for it; after a start it waits for training to
start. Re-running on a healthy host with the same inputs plans no step and says so. Multi-node
groups: deploy.flow.group.

``take-lease`` goes just before the (re)start, only when the plan starts training and the deploy
belongs to a run: it takes the run's next attempt (deploy.training.lease) and writes it to
``REMOTE_DIR/.gpu-deploy/attempt.json``, where the training's entrypoint claims it. A training of an
older attempt (a replaced pod still running, another host deployed with the same run) then stops
without writing. The attempt never goes into the host's .env: a deploy that changes nothing stays a
no-op.

Example::

    outcomes = deploy_hosts(specs, rollout, settings, options, storage, BucketImages(storage))
"""

from __future__ import annotations

import dataclasses
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

from deploy.errors import HostError
from deploy.hosts.dataset import StagePlan, execute_stage, plan_for_host
from deploy.hosts.envfile import plan_env
from deploy.hosts.probe import HostFacts, probe
from deploy.hosts.remote import make_dirs, write_atomic
from deploy.hosts.ssh import HostOptions, HostSpec, Outcome, connect, for_each_host, require_sftp
from deploy.runtimes.base import (START_STEPS, DeployResult, HostRun, ImageSource, Log, Plan, Runtime, Step,
                                  StepHandler, wait_for_training, warm_ahead)
from deploy.settings import Settings
from deploy.storage import Storage
from deploy.training.lease import ATTEMPT_FILE, Lease, attempt_document, grant, read_lease
from deploy.flow.ahead import Ahead
from deploy.flow.choose import choose_runtime, runtimes

if TYPE_CHECKING:
    from fabric import Connection

STAGE_DATASET = "stage-dataset"
TAKE_LEASE = "take-lease"


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
    runtime: str = "auto"  # compose, native or auto (decided per host from the probe)
    native_python: str = "python3"
    package_index: str = ""
    image_problem: str | None = None  # the image is missing from the bucket: a problem for compose hosts only
    run_id: str = ""  # the run ledger's run (deploy.ledger): the host's .env gets RUN_ID and RUN_HOST

    @classmethod
    def from_settings(cls, settings: Settings, sources: Any, *, run_id: str, restart: bool = False,
                      wait: float = 300.0, master_addr: str | None = None, num_nodes: int | None = None) -> Rollout:
        """The rollout ``deploy-runpod`` and the managed run's watcher both make: settings, the image and
        dataset from :func:`deploy.flow.sources.gather_sources`, the run and how to (re)start."""
        return cls(image_ref=settings.image, image_id=sources.image_id, image_bytes=sources.image_bytes,
                   remote_dir=settings.remote_dir, data_dir=settings.data_dir, dataset=sources.dataset,
                   restart=restart, wait=wait, num_nodes=num_nodes or settings.num_nodes,
                   master_addr=settings.master_addr or master_addr, master_port=settings.master_port,
                   runtime=settings.runtime, native_python=settings.native_python,
                   package_index=settings.package_index,
                   image_problem=sources.image_problem, run_id=run_id)

    def data_dir_for(self, spec: HostSpec) -> str:
        return self.data_dir or f"{spec.workdir(self.remote_dir)}/data"

    def host_run(self, spec: HostSpec, settings: Settings, rank: int, facts: HostFacts) -> HostRun:
        """What this host gets: its .env carries its rank and the GPUs its probe found."""
        extra = {"IMAGE": self.image_ref, "DATA_DIR": self.data_dir_for(spec), "ENABLE_S3_SYNC": "1",
                 "CHECKPOINT": "s3"}
        if self.run_id:  # RUN_HOST: how events and heartbeats name this host, as the deploy's events do
            extra.update(RUN_ID=self.run_id, RUN_HOST=str(spec))
        if self.num_nodes > 1:
            extra.update(NUM_NODES=str(self.num_nodes), NODE_RANK=str(rank), DEVICES=str(max(1, len(facts.gpus))),
                         MASTER_ADDR=self.master_addr or "", MASTER_PORT=str(self.master_port))
        return HostRun(spec=spec, remote_dir=spec.workdir(self.remote_dir), env=plan_env(settings, extra=extra),
                       image_ref=self.image_ref, image_id=self.image_id, image_bytes=self.image_bytes,
                       image_problem=self.image_problem, restart=self.restart, native_python=self.native_python,
                       data_dir=self.data_dir_for(spec), package_index=self.package_index)


@dataclass(frozen=True)
class LeasePlan:
    """The ``take-lease`` step, planned: the run, the attempt a deploy would take now, who holds the run."""

    run_id: str
    attempt: int
    holder: str = "nobody"

    @classmethod
    def read(cls, storage: Storage, run_id: str) -> "LeasePlan":
        """From the run's lease as it is now (read-only: a dry run writes nothing)."""
        lease = read_lease(storage, run_id)
        if lease is None:
            return cls(run_id, 1)
        return cls(run_id, max(lease.granted, lease.claimed) + 1, lease.holder)

    def describe(self) -> str:
        now = f" ({self.holder} holds it now)" if self.holder != "nobody" else ""
        return (f"attempt {self.attempt} of run {self.run_id}{now}; a training of an older attempt stops "
                "without writing")


@dataclass(frozen=True)
class HostDeploy:
    """One host's deploy, planned: its runtime, the runtime's plan, and the steps the flow owns."""

    run: HostRun
    runtime: Runtime
    plan: Plan
    stage: StagePlan | None = None
    lease: LeasePlan | None = None

    @property
    def spec(self) -> HostSpec:
        return self.run.spec

    def describe(self) -> list[str]:
        return self.plan.describe()

    def service(self) -> Any:
        return self.runtime.service(self.run.remote_dir, self.plan.facts)


def with_stage(plan: Plan, stage: StagePlan | None) -> Plan:
    """``plan`` with the dataset step before the (re)start, when the dataset on the host is not current."""
    if stage is None or stage.noop:
        return plan
    steps = list(plan.steps)
    at = next((i for i, s in enumerate(steps) if s.name in START_STEPS), len(steps))
    steps.insert(at, Step(STAGE_DATASET, stage.describe()))
    return dataclasses.replace(plan, steps=tuple(steps))


def starts_training(plan: Plan) -> bool:
    return any(s.name in START_STEPS for s in plan.steps)


def with_lease(plan: Plan, lease: LeasePlan | None) -> Plan:
    """``plan`` with ``take-lease`` just before the (re)start; unchanged when it starts nothing."""
    if lease is None or not starts_training(plan):
        return plan
    steps = list(plan.steps)
    at = next(i for i, s in enumerate(steps) if s.name in START_STEPS)
    steps.insert(at, Step(TAKE_LEASE, lease.describe()))
    return dataclasses.replace(plan, steps=tuple(steps))


def prepare(conn: Connection, spec: HostSpec, rollout: Rollout, settings: Settings, runtime: Runtime, facts: HostFacts,
            reason: str = "", rank: int = 0, storage: Storage | None = None) -> HostDeploy:
    """Gather (read-only) and plan one host with ``runtime``."""
    run = rollout.host_run(spec, settings, rank, facts)
    desired = runtime.desire(run)
    plan = runtime.plan(spec, desired, runtime.gather(conn, desired, facts), facts)
    stage = None
    if rollout.dataset and storage is not None:
        stage = plan_for_host(conn, storage, rollout.dataset, rollout.data_dir_for(spec))
    plan = with_stage(plan, stage)
    lease = None
    if rollout.run_id and storage is not None and starts_training(plan):
        lease = LeasePlan.read(storage, rollout.run_id)
    return HostDeploy(run=run, runtime=runtime, plan=dataclasses.replace(with_lease(plan, lease), reason=reason),
                      stage=stage, lease=lease)


def stage_step(storage: Storage, stage: StagePlan) -> StepHandler:
    """The ``stage-dataset`` handler: the same for every runtime, so the flow owns it."""

    def handler(conn: Connection, plan: Plan, log: Log) -> None:
        execute_stage(conn, storage, stage)

    return handler


def write_attempt(conn: Connection, remote_dir: str, run_id: str, attempt: int) -> None:
    """``REMOTE_DIR/.gpu-deploy/attempt.json``, atomically: where the training's entrypoint reads its attempt
    (compose mounts REMOTE_DIR at its working directory, so the same relative path serves both runtimes)."""
    path = posixpath.join(remote_dir, ATTEMPT_FILE)
    make_dirs(conn, posixpath.dirname(path))
    write_atomic(conn, path, attempt_document(run_id, attempt), mode=0o644)


def take_lease(storage: Storage, run_id: str, to: str, planned: int | None, log: Log) -> Lease:
    """Take the run's next attempt; say so when another deploy took the one the plan showed meanwhile."""
    lease = grant(storage, run_id, to=to)
    if planned is not None and lease.granted != planned:
        log(f"{TAKE_LEASE}: attempt {lease.granted} of run {run_id} (another deploy took attempt {planned} "
            "meanwhile)")
    return lease


def lease_step(storage: Storage, deploy: HostDeploy) -> StepHandler:
    """The ``take-lease`` handler: the same for every runtime, so the flow owns it."""
    assert deploy.lease is not None
    planned = deploy.lease

    def handler(conn: Connection, plan: Plan, log: Log) -> None:
        lease = take_lease(storage, planned.run_id, str(deploy.spec), planned.attempt, log)
        write_attempt(conn, deploy.run.remote_dir, planned.run_id, lease.granted)

    return handler


def refuse_problems(deploy: HostDeploy) -> None:
    if deploy.plan.problems:
        raise HostError(f"{deploy.spec.host}:{deploy.spec.port}: {deploy.plan.problems[0]}")


def execute(conn: Connection, deploy: HostDeploy, storage: Storage | None = None, wait: float = 300.0,
            log: Log = lambda s: None, start: bool = True) -> DeployResult:
    """Carry out the plan's steps in order by the runtime's handlers; then wait for training to start.

    ``start=False`` leaves the start step and the lease to the caller (a multi-node group takes one
    attempt for every node, then starts rank 0 first).
    """
    refuse_problems(deploy)
    plan, began = deploy.plan, time.monotonic()
    handlers: dict[str, StepHandler] = dict(deploy.runtime.handlers)
    if deploy.stage is not None and storage is not None:
        handlers[STAGE_DATASET] = stage_step(storage, deploy.stage)
    if deploy.lease is not None and storage is not None:
        handlers[TAKE_LEASE] = lease_step(storage, deploy)
    done: list[str] = []
    since: int | None = None
    for step in plan.steps:
        if (step.name in START_STEPS or step.name == TAKE_LEASE) and not start:
            continue
        handler = handlers.get(step.name)
        if handler is None:  # a runtime planned a step it cannot carry out: a bug, named
            raise HostError(f"The {deploy.runtime.name} runtime has no handler for its step {step.name!r}.")
        log(f"{deploy.spec.host}: {step.name}: {step.detail}")
        offset = handler(conn, plan, log)
        if step.name in START_STEPS:
            since = offset or 0
        done.append(step.name)
    service = deploy.service()
    state = service.state(conn) if since is None else wait_for_training(conn, service, since, wait)
    return DeployResult(spec=deploy.spec, done=tuple(done), service=state, seconds=time.monotonic() - began,
                        follow=f"fab logs --follow --hosts={deploy.spec}", runtime=deploy.runtime.name)


def deploy_hosts(specs: list[HostSpec], rollout: Rollout, settings: Settings, options: HostOptions, storage: Storage,
                 images: ImageSource, dry_run: bool = False, log: Log = print,
                 report: Callable[[HostSpec, HostFacts, DeployResult], None] | None = None,
                 ahead: Ahead | None = None) -> list[Outcome]:
    """Independent runs on each host, in parallel; every host's outcome is collected.

    Each host runs compose or native (no Docker, e.g. a RunPod pod) as ``rollout.runtime`` and its probe say.
    ``report`` hears each host's result with its facts (the run ledger records the deploy). ``ahead``: hosts
    connected and probed already (:mod:`deploy.flow.ahead`), used instead of connecting and probing here.
    """
    available = runtimes(images, options, settings.train_project, storage)  # both ship TRAIN_PROJECT's code

    def work(spec: HostSpec) -> DeployResult | None:
        require_sftp(spec)  # .env and code travel over SFTP: refuse RunPod's proxy SSH before connecting
        opened = ahead.take(spec) if ahead is not None else None
        with opened.conn if opened is not None else connect(spec, options) as conn:
            if opened is not None:
                facts = opened.facts
            else:
                warm = {} if dry_run else warm_ahead(available, rollout.runtime, spec.workdir(rollout.remote_dir))
                facts = probe(conn, spec.workdir(rollout.remote_dir), warm.get("native", ""), warm.get("compose", ""))
            name, reason = choose_runtime(rollout.runtime, facts)
            deploy = prepare(conn, spec, rollout, settings, available[name], facts, reason, storage=storage)
            log("\n".join(deploy.describe()))
            refuse_problems(deploy)
            if dry_run:
                return None
            result = execute(conn, deploy, storage, wait=rollout.wait, log=log)
            if report is not None:
                report(spec, facts, result)
            return result

    return for_each_host(specs, work)
