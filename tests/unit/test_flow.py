"""The deploy flow over any runtime: it calls only the Runtime interface, owns the dataset step, waits for training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from deploy.errors import HostError
from deploy.flow.choose import runtimes
from deploy.flow.rollout import STAGE_DATASET, HostDeploy, Rollout, execute, with_stage
from deploy.hosts import HostSpec
from deploy.hosts.dataset import RemoteFile, plan_stage
from deploy.hosts.envfile import EnvShipment
from deploy.hosts.probe import Gpu, HostFacts
from deploy.runtimes.base import HostRun, Plan, Progress, ServiceState, Step, wait_for_training
from deploy.runtimes.compose import HostState, plan_deploy
from deploy.runtimes.native.plan import NativeState, plan_native
from deploy.settings import Secret, load_settings
from tests.unit.test_native import DESIRED as NATIVE
from tests.unit.test_rollout import DESIRED as COMPOSE

SPEC = HostSpec("203.0.113.10", 40022)
RUN = HostRun(spec=SPEC, remote_dir="/workspace/run", env=EnvShipment(keys=(), _content=Secret("")))
RUNNING = ServiceState(exists=True, running=True, status="running")


@dataclass(frozen=True, kw_only=True)
class FakePlan(Plan):
    runtime: ClassVar[str] = "fake"
    idle: ClassVar[str] = "all good"


@dataclass
class FakeService:
    """A service that starts after ``starts_after`` looks, or gives up."""

    starts_after: int = 0
    gives_up: bool = False
    looks: list[int] = field(default_factory=list)
    kind: ClassVar[str] = "fake"

    def state(self, conn: Any) -> ServiceState:
        return RUNNING

    def logs(self, conn: Any, tail: int = 100) -> str:
        return "last words"

    def logs_command(self, tail: int = 100, follow: bool = False) -> str:
        return "tail"

    def start(self, conn: Any, recreate: bool = False) -> int:
        return 7

    def progress(self, conn: Any, since: int) -> Progress:
        self.looks.append(since)
        if self.gives_up:
            return Progress(ServiceState(exists=True, status="exited"), started=False, failed=True)
        return Progress(RUNNING, started=len(self.looks) > self.starts_after, failed=False)

    def stop(self, conn: Any, timeout: int = 120) -> None:
        pass


class FakeRuntime:
    name = "fake"

    def __init__(self, service: FakeService | None = None) -> None:
        self.calls: list[str] = []
        self.fake_service = service or FakeService()

    @property
    def handlers(self) -> Mapping[str, Any]:
        def record(name: str, result: int | None = None):
            return lambda conn, plan, log: (self.calls.append(name), result)[1]

        return {"write-env": record("write-env"), "start": record("start", 42)}

    def service(self, remote_dir: str, facts: HostFacts) -> FakeService:
        return self.fake_service


def deploy_of(*steps: str, problems: tuple[str, ...] = (), runtime: FakeRuntime | None = None) -> HostDeploy:
    plan = FakePlan(spec=SPEC, steps=tuple(Step(s, s) for s in steps), problems=problems)
    return HostDeploy(run=RUN, runtime=runtime or FakeRuntime(), plan=plan)


def test_the_flow_runs_each_step_by_its_handler_then_waits_from_the_start_s_offset() -> None:
    runtime = FakeRuntime()
    result = execute(None, deploy_of("write-env", "start", runtime=runtime), wait=5)
    assert runtime.calls == ["write-env", "start"] and runtime.fake_service.looks == [42]
    assert result.done == ("write-env", "start") and result.runtime == "fake" and result.service.running
    assert result.follow == f"fab logs --follow --hosts={SPEC}"


def test_a_group_member_is_prepared_without_its_start() -> None:
    runtime = FakeRuntime()
    result = execute(None, deploy_of("write-env", "start", runtime=runtime), start=False)
    assert runtime.calls == ["write-env"] and result.done == ("write-env",) and runtime.fake_service.looks == []


def test_a_plan_with_a_problem_changes_nothing() -> None:
    runtime = FakeRuntime()
    with pytest.raises(HostError, match=r"^203.0.113.10:40022: no Docker$"):
        execute(None, deploy_of("write-env", problems=("no Docker",), runtime=runtime))
    assert runtime.calls == []


def test_a_step_without_a_handler_is_named() -> None:
    with pytest.raises(HostError, match="fake runtime has no handler for its step 'teleport'"):
        execute(None, deploy_of("teleport"))


def test_the_dataset_step_goes_before_the_start_and_only_when_needed() -> None:
    files = [RemoteFile("a.csv", "k", 3, "e")]
    stage = plan_stage(files, {}, "tiny", "/data")
    plan = FakePlan(spec=SPEC, steps=(Step("write-env", ""), Step("start", "")))
    assert [s.name for s in with_stage(plan, stage).steps] == ["write-env", STAGE_DATASET, "start"]
    current = plan_stage(files, stage.marker, "tiny", "/data")
    assert with_stage(plan, current) is plan
    assert [s.name for s in with_stage(FakePlan(spec=SPEC, steps=()), stage).steps] == [STAGE_DATASET]


def test_every_runtime_prints_the_same_frame() -> None:
    lines = FakePlan(spec=SPEC, steps=(), reason="asked for").describe()
    assert lines == [f"host      {SPEC}", "runtime   fake (asked for)", "changes   none: all good"]


def test_waiting_fails_with_the_last_log_lines_when_the_service_gives_up() -> None:
    with pytest.raises(HostError, match=r"did not start within 5 s \(fake exited, 0 restarts\); "
                                        r"last log lines:\nlast words"):
        wait_for_training(None, FakeService(gives_up=True), 0, timeout=5)


def test_waiting_looks_again_until_training_has_started() -> None:
    service = FakeService(starts_after=2)
    assert wait_for_training(None, service, 3, timeout=5, interval=0.01) == RUNNING
    assert service.looks == [3, 3, 3]


def test_a_multi_node_host_gets_its_rank_and_its_gpus_in_the_env() -> None:
    settings = load_settings(overrides={"S3_BUCKET": "my-bucket"}, environ={})
    rollout = Rollout(image_ref="t:v1", image_id="sha256:x", image_bytes=1, remote_dir="/w", num_nodes=2,
                      master_addr="10.0.0.1", master_port=29600)
    facts = HostFacts(gpus=(Gpu("A100", 81920, "550"), Gpu("A100", 81920, "550")))
    run = rollout.host_run(SPEC, settings, rank=1, facts=facts)
    text = run.env.content().decode()
    for pair in ("NODE_RANK='1'", "DEVICES='2'", "NUM_NODES='2'", "MASTER_ADDR='10.0.0.1'", "MASTER_PORT='29600'"):
        assert pair in text or pair.replace("'", "") in text, pair
    single = Rollout(image_ref="t:v1", image_id="", image_bytes=0, remote_dir="/w").host_run(SPEC, settings, 0, facts)
    assert "NODE_RANK" not in single.env.keys and single.remote_dir == "/w"


def test_every_step_a_runtime_plans_has_a_handler() -> None:
    available = runtimes()
    fresh_vm = HostFacts(is_root=True, docker="26.1", compose_v2="2.27", tools=frozenset({"apt-get"}))
    compose = plan_deploy(SPEC, COMPOSE, HostState(facts=fresh_vm, host_image_id="", env_digest=None,
                                                   file_digests={}, service=ServiceState(exists=False)))
    native = plan_native(SPEC, NATIVE, NativeState(base=None), HostFacts())
    restarts = [Step("restart", "")]
    for name, plan in (("compose", compose), ("native", native)):
        names = {s.name for s in [*plan.steps, *restarts]}
        assert names <= set(available[name].handlers), (name, names - set(available[name].handlers))


def test_saved_on_stop_reads_the_last_line_the_training_side_printed() -> None:
    from deploy.flow.status import saved_on_stop
    from deploy.training.stop import SAVED_ON_STOP

    tail = ("epoch 1\n" + SAVED_ON_STOP.format(step=40) + ", uploaded to s3://b/p/checkpoints/stop-epoch=0-step=40.ckpt\n"
            + "restarted\n" + SAVED_ON_STOP.format(step=88) + ", upload pending: /w/x.ckpt stays staged\n")
    assert saved_on_stop(tail) == (88, "upload pending: /w/x.ckpt stays staged")
    assert saved_on_stop("no stop here\n") is None


def test_what_a_runtime_can_do_is_its_own_attribute() -> None:
    available = runtimes()
    assert {n: (r.multi_node, r.needs_image) for n, r in available.items()} == {
        "compose": (True, True), "native": (False, False)}


def test_a_group_refuses_a_runtime_that_cannot_train_across_hosts_before_connecting() -> None:
    from deploy.errors import ConfigError
    from deploy.flow.group import deploy_group
    from deploy.hosts import HostOptions

    settings = load_settings(overrides={"S3_BUCKET": "my-bucket"}, environ={})
    rollout = Rollout(image_ref="t:v1", image_id="", image_bytes=0, remote_dir="/w", num_nodes=2, runtime="native")
    unreachable = HostSpec("192.0.2.1", 22)  # TEST-NET: a connect would time out, so none may be tried
    with pytest.raises(ConfigError, match=r"^Multi-node runs \(NUM_NODES > 1\) need the compose runtime"):
        deploy_group([unreachable, unreachable], rollout, settings, HostOptions(), None, None)  # type: ignore[arg-type]
