"""Creating with fallback and waiting for the SSH port, over a scripted API (no server, no sleeping)."""

from __future__ import annotations

import pytest

from deploy.pods.models import RUNNING, NoCapacityError, Pod, PodError, PodRequest
from deploy.pods.provision import Clock, create_first, wait_for_ssh


def request(gpu: str, dc: str | None = None) -> PodRequest:
    return PodRequest(name="gpu-deploy-p-1", image="img", gpu_type=gpu, gpu_count=1, cloud_type="ALL",
                      data_center=dc, container_disk_gb=20, volume_gb=50, public_key="ssh-ed25519 AAAA k")


class ScriptedApi:
    """Answers create from a set of GPU types without capacity, and get from a list of pod states."""

    def __init__(self, full: set[str] = frozenset(), states: list[Pod | None] | None = None) -> None:
        self.full = full
        self.states = list(states or [])
        self.created: list[str] = []

    def create(self, req: PodRequest) -> str:
        if req.gpu_type in self.full:
            raise NoCapacityError("RunPod has no capacity")
        self.created.append(req.gpu_type)
        return "pod1"

    def get(self, pod_id: str) -> Pod | None:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


class FakeClock(Clock):
    def __init__(self) -> None:
        self.t = 0.0
        super().__init__(now=lambda: self.t, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.t += seconds


def pod(status: str = RUNNING, ports: tuple = ()) -> Pod:
    return Pod(id="pod1", name="n", status=status, has_runtime=bool(ports), runtime_ports=ports)


PUBLIC = ({"ip": "203.0.113.7", "isIpPublic": True, "privatePort": 22, "publicPort": 40122, "type": "tcp"},)
PRIVATE = ({"ip": "10.0.0.2", "isIpPublic": False, "privatePort": 22, "publicPort": 22, "type": "tcp"},)


def test_first_gpu_type_with_capacity_wins_and_each_refusal_is_reported() -> None:
    api, lines = ScriptedApi(full={"NVIDIA L40S"}), []
    pod_id, chosen = create_first(api, [request("NVIDIA L40S"), request("NVIDIA RTX A6000")], lines.append)
    assert (pod_id, chosen.gpu_type, api.created) == ("pod1", "NVIDIA RTX A6000", ["NVIDIA RTX A6000"])
    assert lines[0] == "no capacity for 1 x NVIDIA L40S (all cloud)"


def test_no_capacity_anywhere_names_every_try() -> None:
    api = ScriptedApi(full={"NVIDIA L40S", "NVIDIA RTX A6000"})
    with pytest.raises(NoCapacityError, match=r"any GPU type tried: 1 x NVIDIA L40S \(all cloud in EU-RO-1\); "
                                              r"1 x NVIDIA RTX A6000 \(all cloud\); add types"):
        create_first(api, [request("NVIDIA L40S", "EU-RO-1"), request("NVIDIA RTX A6000")])


def test_wait_reports_each_state_once_and_returns_the_public_endpoint() -> None:
    api = ScriptedApi(states=[pod(), pod(), pod(), pod(ports=PRIVATE), pod(ports=PUBLIC)])
    lines: list[str] = []
    found = wait_for_ssh(api, "pod1", timeout=60, progress=lines.append, clock=FakeClock(), probe=lambda e: True)
    assert found.ssh is not None and found.ssh.host_spec() == "root@203.0.113.7:40122"
    assert [line.split(": ", 1)[1] for line in lines] == [
        "starting (pulling the image)", "running, no public SSH port yet", "running, SSH at 203.0.113.7:40122"]
    assert lines[0].strip().startswith("0 s")


def test_a_pod_that_never_gets_a_public_port_times_out_in_one_sentence() -> None:
    clock = FakeClock()
    with pytest.raises(PodError, match=r"Pod pod1 has no public SSH port after 30 s \(it is running, no public SSH "
                                       r"port yet\); wait longer with --timeout, or remove it with fab pods.down --pod pod1"):
        wait_for_ssh(ScriptedApi(states=[pod(ports=PRIVATE)]), "pod1", timeout=30, clock=clock)
    assert clock.t == pytest.approx(30)


def test_a_pod_that_exits_or_disappears_while_starting_fails_at_once() -> None:
    with pytest.raises(PodError, match="Pod pod1 is EXITED instead of starting"):
        wait_for_ssh(ScriptedApi(states=[pod(), pod(status="EXITED")]), "pod1", timeout=60, clock=FakeClock())
    with pytest.raises(PodError, match="Pod pod1 disappeared while starting"):
        wait_for_ssh(ScriptedApi(states=[None]), "pod1", timeout=60, clock=FakeClock())


def test_a_listed_port_counts_only_once_sshd_answers_on_it() -> None:
    api = ScriptedApi(states=[pod(ports=PUBLIC)])
    answers = iter([False, False, True])
    lines: list[str] = []
    wait_for_ssh(api, "pod1", timeout=60, progress=lines.append, clock=FakeClock(), probe=lambda e: next(answers))
    assert [line.split(": ", 1)[1] for line in lines] == [
        "running, SSH at 203.0.113.7:40122, sshd not answering yet", "running, SSH at 203.0.113.7:40122"]
