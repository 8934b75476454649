"""The watcher's parts around the decision: reading the pod's one-round-trip look, the signed state in the
bucket, what a detach and the end say, and the loop driving stand-in hands through a lost pod."""

from __future__ import annotations

import dataclasses
import json

import pytest

from deploy.ledger.store import RunLedger, read_run
from deploy.settings import Secret
from deploy.watch.act import Created, Ended
from deploy.watch.decide import Guardrails, PodSeen, RunFact
from deploy.watch.facts import Action
from deploy.watch.loop import Watcher
from deploy.watch.managed import continued, detached_message, exit_code, final_message
from deploy.runtimes.compose.service import parse_compose_look
from deploy.runtimes.native.service import NativeService, parse_native_look
from deploy.watch.observe import fact_of
from deploy.watch.record import StateStore, WatchError
from deploy.watch.state import DONE, WATCHING, PodRecord, WatchState

T0 = 1_800_000_000.0
KEY = Secret("rp-unit-" + "k" * 8)


def training(run_id: str = "r1") -> WatchState:
    pod = PodRecord(name=f"gpu-deploy-3f2a9c1b-run-{run_id}-1", attempt=1, asked_at=T0, price=0.79, id="pod-a",
                    host="root@10.0.0.5:40022")
    return WatchState(run_id=run_id, started_at=T0, project="3f2a9c1b", phase=WATCHING, pods=(pod,), current=pod.name)


def test_a_native_look_reads_status_step_and_mean_gpu_utilisation() -> None:
    out = ('{"alive": false, "status": "exited", "exit_code": 0}\n@@gpu-deploy-heartbeat\n{"step": 120, "epoch": 3}\n'
           "\n@@gpu-deploy-gpu\n10\n30\n")
    assert fact_of(parse_native_look(out)) == RunFact(reachable=True, service="exited", step=120, gpu_percent=20.0)


def test_a_native_look_without_heartbeat_gpu_or_deploy() -> None:
    look = parse_native_look("\n@@gpu-deploy-heartbeat\n\n@@gpu-deploy-gpu\n")
    assert fact_of(look) == RunFact(reachable=True, service="absent")


def test_the_native_look_command_quotes_the_folder() -> None:
    line = NativeService("/workspace/my run").look_command()
    assert "'/workspace/my run/lightning_logs/heartbeat.json'" in line and "nvidia-smi" in line


def _compose_look(state: str) -> str:
    return (f'id=0123456789abcdef\n{{"state": {state}, "image": "sha256:i", "restarts": 0}}\n@@gpu-deploy-clock\n'
            '1800000000.5\n@@gpu-deploy-heartbeat\n{"step": 77}\n\n@@gpu-deploy-gpu\n50\n')


@pytest.mark.parametrize("state, word", [
    ('{"Status": "running", "Running": true}', "running"),
    ('{"Status": "restarting", "Running": true}', "restarting"),
    ('{"Status": "created", "Running": false}', "starting"),
    ('{"Status": "exited", "Running": false, "ExitCode": 0}', "exited"),
    ('{"Status": "exited", "Running": false, "ExitCode": 143}', "stopped"),
    ('{"Status": "exited", "Running": false, "ExitCode": 1}', "failed"),
], ids=["running", "restarting", "created", "exit-0", "sigterm", "exit-1"])
def test_a_compose_look_answers_the_watcher_in_the_supervisor_s_words(state: str, word: str) -> None:
    assert fact_of(parse_compose_look(_compose_look(state))) == RunFact(reachable=True, service=word, step=77,
                                                                        gpu_percent=50.0)


def test_a_compose_host_without_the_service_is_absent() -> None:
    look = parse_compose_look("id=\n@@gpu-deploy-clock\n1800000000.5\n@@gpu-deploy-heartbeat\n\n@@gpu-deploy-gpu\n")
    assert not look.service.exists and fact_of(look) == RunFact(reachable=True, service="absent")


# ----------------------------------------------------------------------------- the state in the bucket


def test_state_round_trips_signed_and_a_second_watcher_takes_over(moto_storage) -> None:
    store = StateStore(moto_storage, "r1", KEY)
    etag = store.save(training(), None)
    loaded, loaded_etag = store.load()
    assert loaded == training() and loaded_etag == etag

    taker = StateStore(moto_storage, "r1", KEY).save(dataclasses.replace(loaded, restarts=2), loaded_etag)
    assert taker != etag
    with pytest.raises(WatchError, match="Another watcher took over run r1"):
        store.save(dataclasses.replace(training(), restarts=1), etag)  # the first watcher, later


def _rewrite(storage, run_id: str, change) -> None:
    key = storage.key("runs", run_id, "watch", "state.json")
    data = json.loads(storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"].read())
    storage.client.put_object(Bucket=storage.bucket, Key=key, Body=json.dumps(change(data)).encode())


@pytest.mark.parametrize("forge", [
    lambda d: {**d, "pods": []},                               # a host hides its pod from the watcher
    lambda d: {**d, "phase": "done"},                          # ... or ends the run's watch
    lambda d: {k: v for k, v in d.items() if k != "digest"},   # no digest at all
    lambda d: ["not", "an", "object"],
    lambda d: {**d, "digest": "hmac-sha256:" + "0" * 64},
], ids=["pods-removed", "marked-done", "no-digest", "not-an-object", "wrong-digest"])
def test_a_state_the_watchers_key_did_not_sign_is_refused_in_one_sentence(moto_storage, forge) -> None:
    StateStore(moto_storage, "r1", KEY).save(training(), None)
    _rewrite(moto_storage, "r1", forge)
    with pytest.raises(WatchError) as caught:
        StateStore(moto_storage, "r1", KEY).load()
    message = str(caught.value)
    assert "s3://unit-bucket/p/runs/r1/watch/state.json" in message and "\n" not in message
    assert "Traceback" not in message


def test_another_runpod_key_cannot_read_the_state_as_its_own(moto_storage) -> None:
    StateStore(moto_storage, "r1", KEY).save(training(), None)
    with pytest.raises(WatchError, match="not written by a watcher holding this RUNPOD_API_KEY"):
        StateStore(moto_storage, "r1", Secret("another-key")).load()


def test_an_unmanaged_run_is_one_sentence(moto_storage) -> None:
    with pytest.raises(WatchError, match=r"^Run r9 has no watcher state in s3://unit-bucket/p/runs/r9/watch/"):
        StateStore(moto_storage, "r9", KEY).load()


def test_without_conditional_writes_a_second_watcher_is_refused_while_the_lease_is_live(moto_storage) -> None:
    clock = [T0]
    first = StateStore(moto_storage, "r1", KEY, conditional=False, owner="laptop", clock=lambda: clock[0])
    second = StateStore(moto_storage, "r1", KEY, conditional=False, owner="server", clock=lambda: clock[0])
    first.save(training(), None)
    with pytest.raises(WatchError, match=r"Another watcher \(laptop\) holds run r1 until .*only one watcher may run"):
        second.save(training(), None)
    clock[0] += 601  # the first watcher died: its lease runs out
    second.save(training(), None)
    first.release_lease()


# ----------------------------------------------------------------------------- what it says


def test_detach_lists_every_pod_still_billing_and_how_to_go_on() -> None:
    state = training()
    state = state.with_record(state.pod(state.current).ending("lost: pod pod-a was stopped", T0 + 60))
    state = dataclasses.replace(state, current="").ask_for_pod(T0 + 60, 0.86).update(
        "gpu-deploy-3f2a9c1b-run-r1-2", id="pod-b")
    message = detached_message(state, T0 + 120)
    assert message.startswith("Watcher detached from run r1. Still billing:\n")
    assert "  pod-a ($0.79/h, being ended: lost: pod pod-a was stopped)" in message
    assert "  pod-b ($0.86/h, training)" in message or "  pod-b ($0.86/h, starting)" in message
    assert "fab pods.down --pod pod-a, fab pods.down --pod pod-b" in message


def test_the_end_names_pods_still_billing_and_exits_non_zero() -> None:
    state = dataclasses.replace(training(), phase=DONE, outcome="finished: training exited 0")
    assert exit_code(state) == 3 and "Still billing" in final_message(state, T0 + 3600)
    ended = state.update(state.current, gone=True, ended_at=T0 + 3600)
    assert exit_code(ended) == 0 and "Still billing" not in final_message(ended, T0 + 3600)
    assert "spend $0.79" in final_message(ended, T0 + 7200)


def test_continuing_a_halted_run_keeps_its_spend_and_hours() -> None:
    halted = dataclasses.replace(training(), phase=DONE, outcome="stopped: MAX_SPEND")
    halted = halted.update(halted.current, gone=True, ended_at=T0 + 1800)
    again = continued(halted, T0 + 86400, Guardrails(max_spend=1.0, max_hours=2))
    assert again.hours_before == pytest.approx(0.0)  # a done state's hours are its earlier sessions' (none)
    assert again.spend(T0 + 86400) == pytest.approx(0.79 / 2) and again.phase == "provisioning"
    with pytest.raises(WatchError, match=r"has spent \$0.40 of MAX_SPEND=\$0.30; raise MAX_SPEND"):
        continued(halted, T0 + 86400, Guardrails(max_spend=0.3))


# ----------------------------------------------------------------------------- the loop with stand-in hands


class StandInHands:
    """Records what the watcher asked for; pods come up at once (the real ones are in the e2e tests)."""

    def __init__(self, storage) -> None:
        self.storage, self.calls, self.listed, self.created = storage, [], {}, 0
        self.settings = type("S", (), {"runpod_user": "root"})()

    options = None

    def spec(self, host):
        return host

    def remote_dir(self, host):
        return "/workspace/train"

    def create(self, name, run_id):
        self.created += 1
        pod_id = f"pod-{self.created}"
        self.calls.append(("create", name.rsplit("-", 1)[-1]))
        self.listed[pod_id] = PodSeen(pod_id, name, "RUNNING", True, 0.79, f"root@10.0.0.5:4002{self.created}")
        return Created(pod_id, 0.79, "1 x L40S")

    def run_pods(self, run_id, tracked):
        return tuple(self.listed.values())

    def answers(self, host):
        return True

    def arm(self, host, deadline, why):
        self.calls.append(("arm", host))
        return "armed"

    def deploy(self, host, run_id, restart):
        self.calls.append(("deploy", host))
        return "start"

    def end_pod(self, pod_id, how="terminate", force=True, host=""):
        self.calls.append((how, pod_id, force))
        self.listed.pop(pod_id, None)
        return Ended(True, f"pod {pod_id} terminated")

    def sync_results(self, host):
        self.calls.append(("sync", host))
        return "synced"

    def stop_training(self, host):
        self.calls.append(("stop", host))
        return "stopped"

    def reachable(self, host):
        return True


def test_a_lost_pod_is_replaced_then_the_finished_run_syncs_and_terminates(moto_storage, monkeypatch) -> None:
    hands = StandInHands(moto_storage)
    runs = iter([RunFact(True, "running", 10), RunFact(True, "exited", 40)])
    monkeypatch.setattr("deploy.watch.loop.run_fact", lambda *args: next(runs))
    clock = iter(range(int(T0), int(T0) + 100_000, 5))
    state = WatchState(run_id="r1", started_at=T0, project="3f2a9c1b")
    store = StateStore(moto_storage, "r1", KEY)
    watcher = Watcher(hands, RunLedger(moto_storage, "r1", "watch-test"), Guardrails(max_hours=100, pod_price=0.79),
                      state, store, None, ssh_every=0, clock=lambda: float(next(clock)), sleep=lambda s: None,
                      say=lambda line: None)

    watcher.step()                       # pod 1 asked for and made
    watcher.step()                       # it answers: armed and deployed
    watcher.step()                       # running at step 10
    hands.listed["pod-1"] = dataclasses.replace(hands.listed["pod-1"], status="EXITED")  # RunPod reclaims it
    watcher.step()                       # lost: pod-1 must end; pod 2 asked for and made
    final = watcher.run()                # pod 2 up, deployed, exits 0: synced and terminated

    assert hands.calls == [("create", "1"), ("arm", "root@10.0.0.5:40021"), ("deploy", "root@10.0.0.5:40021"),
                           ("terminate", "pod-1", True), ("create", "2"),
                           ("arm", "root@10.0.0.5:40022"), ("deploy", "root@10.0.0.5:40022"),
                           ("arm", "root@10.0.0.5:40022"),  # the backstop postponed while the run ends
                           ("sync", "root@10.0.0.5:40022"), ("terminate", "pod-2", False)]
    assert final.phase == DONE and final.pod_ids == ("pod-1", "pod-2") and final.replacements == 1
    assert not final.billing() and exit_code(final) == 0
    kinds = [e.kind for e in read_run(moto_storage, "r1").events]
    assert kinds.count("provisioned") == 2 and kinds.count("terminated") == 2 and "preempted" in kinds
    assert kinds.index("preempted") < kinds.index("finished")
    assert store.load()[0] == final


def test_a_pods_billing_is_recorded_until_runpod_took_the_terminate_not_from_before_the_guard(moto_storage) -> None:
    class SlowGuard(StandInHands):
        def end_pod(self, pod_id, how="terminate", force=True, host=""):
            now[0] += 7.0  # the checkpoint guard's SSH look at a lost pod, then the API call
            return super().end_pod(pod_id, how, force, host)

    hands, now = SlowGuard(moto_storage), [T0]
    state = WatchState(run_id="r1", started_at=T0, project="3f2a9c1b")
    watcher = Watcher(hands, RunLedger(moto_storage, "r1", "watch-test"), Guardrails(max_hours=100, pod_price=0.79),
                      state, StateStore(moto_storage, "r1", KEY), None, ssh_every=0, clock=lambda: now[0],
                      sleep=lambda s: None, say=lambda line: None)
    watcher.step()  # pod 1 asked for and made
    pod = watcher.state.pods[0]
    watcher.save(watcher.state.with_record(pod.ending("lost", now[0])))
    watcher.end(Action("end", pod=pod.name))
    assert watcher.state.pods[0].end_called_at == T0 + 7.0
