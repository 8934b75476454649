"""The watcher's parts around the decision: reading the pod's one-round-trip look, the state in the bucket,
what a dry run and a detach say, and the loop's handling of a lost pod with stand-in hands."""

from __future__ import annotations

import dataclasses

import pytest

from deploy.ledger.store import read_run
from deploy.watch import record
from deploy.watch.act import Ended
from deploy.watch.decide import DONE, WATCHING, Guardrails, PodFact, RunFact, WatchState
from deploy.watch.loop import Watcher
from deploy.watch.managed import detached_message
from deploy.watch.observe import look_command, parse_look
from deploy.ledger.store import RunLedger

T0 = 1_800_000_000.0


def test_parse_look_reads_status_step_and_mean_gpu_utilisation() -> None:
    out = ('{"alive": false, "status": "exited", "exit_code": 0}\n@@gpu-deploy-heartbeat\n{"step": 120, "epoch": 3}\n'
           "\n@@gpu-deploy-gpu\n10\n30\n")
    assert parse_look(out) == RunFact(reachable=True, service="exited", step=120, gpu_percent=20.0)


def test_parse_look_without_heartbeat_gpu_or_deploy() -> None:
    assert parse_look("\n@@gpu-deploy-heartbeat\n\n@@gpu-deploy-gpu\n") == RunFact(reachable=True, service="absent")


def test_look_command_quotes_the_folder() -> None:
    line = look_command("/workspace/my run")
    assert "'/workspace/my run/lightning_logs/heartbeat.json'" in line and "nvidia-smi" in line


def test_state_round_trips_through_the_bucket_and_a_second_watcher_takes_over(moto_storage) -> None:
    state = WatchState(run_id="r1", started_at=T0).with_pod("pod-a", "root@10.0.0.5:40022", 0.79, T0)
    etag = record.save(moto_storage, state, None)
    loaded, loaded_etag = record.load(moto_storage, "r1")
    assert loaded == state and loaded_etag == etag

    taker = record.save(moto_storage, dataclasses.replace(loaded, phase=WATCHING), loaded_etag)  # fab train.watch
    assert taker != etag
    with pytest.raises(record.WatchError, match="Another watcher took over run r1"):
        record.save(moto_storage, dataclasses.replace(state, restarts=1), etag)  # the first watcher, later


def test_an_unmanaged_run_is_one_sentence(moto_storage) -> None:
    with pytest.raises(record.WatchError, match=r"^Run r9 has no watcher state in s3://unit-bucket/p/runs/r9/watch/"):
        record.load(moto_storage, "r9")


def test_detach_says_what_keeps_billing_and_how_to_go_on() -> None:
    state = WatchState(run_id="r1", started_at=T0).with_pod("pod-a", "root@10.0.0.5:40022", 0.79, T0)
    assert detached_message(state) == ("Watcher detached from run r1. Pod pod-a keeps running and billing ($0.79/h). "
                                       "Attach again: fab train.watch r1; take it down: fab pods.down --pod pod-a")


class StandInHands:
    """Records what the watcher asked for; pods come up at once (the real ones are in the e2e test)."""

    def __init__(self, storage, pods) -> None:
        self.storage, self.pods, self.calls = storage, list(pods), []
        self.api = self
        self.settings = type("S", (), {"runpod_user": "root"})()

    options = None

    def spec(self, host):
        return host

    def remote_dir(self, host):
        return "/workspace/train"

    def create_pod(self, on_created):
        pod = self.pods.pop(0)
        self.calls.append(("create", pod.id))
        on_created(pod.id)
        return pod.id

    def wait_for_pod(self, pod_id):
        return next(p for p in self.created if p.id == pod_id)

    def deploy(self, host, run_id, restart):
        self.calls.append(("deploy", host, restart))
        return "start"

    def end_pod(self, pod_id, action, force=False):
        self.calls.append((action, pod_id, force))
        return Ended(True, f"pod {pod_id} terminated")

    def sync_results(self, host):
        self.calls.append(("sync", host))
        return "synced"

    def stop_training(self, host):
        self.calls.append(("stop", host))
        return "stopped"


def test_a_lost_pod_is_replaced_then_the_finished_run_syncs_and_terminates(moto_storage, monkeypatch) -> None:
    from deploy.pods.models import Pod

    def pod(pod_id, port):
        return Pod(id=pod_id, name=f"gpu-deploy-x-{pod_id}", status="RUNNING", gpu="L40S", gpu_count=1,
                   cost_per_hr=0.79, has_runtime=True,
                   runtime_ports=({"ip": "10.0.0.5", "isIpPublic": True, "privatePort": 22, "publicPort": port},))

    a, b = pod("pod-a", 40022), pod("pod-b", 40023)
    hands = StandInHands(moto_storage, [a, b])
    hands.created = [a, b]
    pods = {"pod-a": PodFact("RUNNING", True, 0.79)}
    runs = iter([RunFact(True, "running", 10), RunFact(True, "exited", 40)])
    monkeypatch.setattr("deploy.watch.loop.pod_fact", lambda api, pod_id: pods.get(pod_id, PodFact("")))
    monkeypatch.setattr("deploy.watch.loop.run_fact", lambda *args: next(runs))
    clock = iter(range(int(T0), int(T0) + 10_000, 5))
    state = WatchState(run_id="r1", started_at=T0)
    watcher = Watcher(hands, RunLedger(moto_storage, "r1", "watch-test"), Guardrails(), state, None, ssh_every=0,
                      clock=lambda: float(next(clock)), sleep=lambda s: None, say=lambda line: None)

    watcher.step()                       # provision pod-a and deploy
    watcher.step()                       # running at step 10
    pods["pod-a"] = PodFact("EXITED")    # RunPod reclaims it
    pods["pod-b"] = PodFact("RUNNING", True, 0.79)
    watcher.step()                       # replaced by pod-b
    final = watcher.run()                # exited 0 on pod-b

    assert hands.calls == [("create", "pod-a"), ("deploy", "root@10.0.0.5:40022", False),
                           ("create", "pod-b"), ("deploy", "root@10.0.0.5:40023", False),
                           ("terminate", "pod-a", True),
                           ("sync", "root@10.0.0.5:40023"), ("terminate", "pod-b", False)]
    assert final.phase == DONE and final.pods == ("pod-a", "pod-b") and final.replacements == 1
    kinds = [e.kind for e in read_run(moto_storage, "r1").events]
    assert kinds == ["provisioned", "deployed", "preempted", "provisioned", "deployed", "terminated", "finished",
                     "terminated"]
    assert record.load(moto_storage, "r1")[0] == final
