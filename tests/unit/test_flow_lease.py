"""The flow's ``take-lease`` step: planned just before a (re)start of a run's training, and only then."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deploy.flow.rollout import STAGE_DATASET, TAKE_LEASE, LeasePlan, Rollout, execute, prepare, with_lease
from deploy.hosts import HostSpec
from deploy.hosts.probe import HostFacts
from deploy.runtimes.base import Step
from deploy.settings import load_settings
from deploy.training.lease import claim, grant, read_lease
from tests.unit.test_flow import SPEC, FakePlan, FakeRuntime

RUN = "20261130-0602-a1b2"
LEASE = LeasePlan(RUN, 4, "attempt 3 on root@203.0.113.5:40022")


def names(plan) -> list[str]:
    return [s.name for s in plan.steps]


def test_take_lease_goes_just_before_the_start_after_the_dataset() -> None:
    plan = FakePlan(spec=SPEC, steps=(Step("write-env", ""), Step(STAGE_DATASET, ""), Step("restart", "")))
    assert names(with_lease(plan, LEASE)) == ["write-env", STAGE_DATASET, TAKE_LEASE, "restart"]
    [step] = [s for s in with_lease(plan, LEASE).steps if s.name == TAKE_LEASE]
    assert step.detail == (f"attempt 4 of run {RUN} (attempt 3 on root@203.0.113.5:40022 holds it now); a training "
                           "of an older attempt stops without writing")


def test_a_plan_that_starts_no_training_takes_no_lease() -> None:
    for steps in ((), (Step("write-env", ""), Step("sync-code", ""))):
        plan = FakePlan(spec=SPEC, steps=steps)
        assert with_lease(plan, LEASE) is plan
    assert with_lease(FakePlan(spec=SPEC, steps=(Step("start", ""),)), None).steps == (Step("start", ""),)


class PlanningRuntime(FakeRuntime):
    """A runtime whose plan is given: the flow's part is what is tested."""

    def __init__(self, steps: tuple[str, ...]) -> None:
        super().__init__()
        self.steps = steps

    def desire(self, run: Any) -> Any:
        return run

    def gather(self, conn: Any, desired: Any, facts: HostFacts) -> Any:
        return None

    def plan(self, spec: HostSpec, desired: Any, state: Any, facts: HostFacts) -> FakePlan:
        return FakePlan(spec=spec, steps=tuple(Step(s, s) for s in self.steps))

    @property
    def handlers(self) -> Mapping[str, Any]:
        return {**super().handlers, "restart": lambda conn, plan, log: (self.calls.append("restart"), 5)[1]}


def planned(moto_storage, steps: tuple[str, ...], run_id: str = RUN):
    settings = load_settings(overrides={"S3_BUCKET": "my-bucket"}, environ={})
    rollout = Rollout(image_ref="t:v1", image_id="", image_bytes=0, remote_dir="/w", run_id=run_id)
    return prepare(None, SPEC, rollout, settings, PlanningRuntime(steps), HostFacts(), storage=moto_storage)


def test_the_plan_shows_the_next_attempt_and_planning_writes_nothing(moto_storage) -> None:
    grant(moto_storage, RUN, to="root@203.0.113.5:40022")
    claim(moto_storage, RUN, 1, "root@203.0.113.5:40022")
    deploy = planned(moto_storage, ("write-env", "restart"))
    assert names(deploy.plan) == ["write-env", TAKE_LEASE, "restart"]
    assert f"change    {TAKE_LEASE}: attempt 2 of run {RUN} (attempt 1 on root@203.0.113.5:40022 holds it now); " \
           "a training of an older attempt stops without writing" in deploy.describe()
    assert read_lease(moto_storage, RUN).granted == 1  # --dry-run stops after the plan: nothing was taken


def test_a_deploy_that_changes_nothing_or_has_no_run_takes_no_lease(moto_storage) -> None:
    assert planned(moto_storage, ()).plan.noop
    assert names(planned(moto_storage, ("write-env",)).plan) == ["write-env"]
    assert names(planned(moto_storage, ("restart",), run_id="").plan) == ["restart"]
    assert read_lease(moto_storage, RUN) is None


def test_a_group_member_prepared_without_its_start_takes_no_lease_either(moto_storage) -> None:
    deploy = planned(moto_storage, ("write-env", "restart"))
    result = execute(None, deploy, moto_storage, start=False)
    assert result.done == ("write-env",) and read_lease(moto_storage, RUN) is None
