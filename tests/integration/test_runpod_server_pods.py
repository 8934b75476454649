"""The local control plane's unhappy paths with real pod containers and the real runpod SDK.

What a managed-run watcher meets on RunPod: a pod that ends itself with the key RunPod put in its
environment, a terminate call that fails, a create call whose answer never comes although the pod was
made, a pod whose sshd died while RunPod still reports it running, and what all of it costs.
Most pods here run on the host's network, so that a pod can call this plane on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import requests
from runpod import error as sdk_error
from runpod.api.graphql import run_graphql_query
from runpod.api.mutations.pods import generate_pod_deployment_mutation, generate_pod_terminate_mutation
from runpod.api.queries.gpus import QUERY_GPU_TYPES
from runpod.api.queries.pods import QUERY_POD, generate_pod_query

from deploy.dev.runpod_server import INTERNAL_ERROR, NOT_AUTHORISED, RunPodServer, ServerPod
from deploy.pods.api import PodApi
from deploy.pods.models import Endpoint, PodError, PodRequest
from deploy.settings import Secret
from tests.harness.runpod import API_KEY
from tests.harness.waiting import wait_until

# Run inside a pod with nothing but its environment: POST one GraphQL document (argv[1], by default the pod's
# own podTerminate) with the pod's key, print the HTTP status and the answer.
POST_FROM_POD = r"""
import json, os, sys, urllib.error, urllib.request
own = 'mutation { podTerminate(input: {podId: "%s"}) }' % os.environ["RUNPOD_POD_ID"]
query = sys.argv[1] if len(sys.argv) > 1 else own
request = urllib.request.Request(
    os.environ["RUNPOD_API_BASE_URL"] + "/graphql", data=json.dumps({"query": query}).encode(),
    headers={"Authorization": "Bearer " + os.environ["RUNPOD_API_KEY"], "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=20) as answer:
        print(answer.status, answer.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""


@pytest.fixture
def host_plane(runpod_host_server: RunPodServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunPodServer]:
    """The host-network plane, pointed at by RUNPOD_API_BASE_URL; emptied and reset after the test."""
    monkeypatch.setenv("RUNPOD_API_BASE_URL", runpod_host_server.url)
    yield runpod_host_server
    runpod_host_server.cleanup()


@pytest.fixture
def api() -> PodApi:
    return PodApi(Secret(API_KEY))


def pod_request(name: str, gpu: str = "NVIDIA L40S") -> PodRequest:
    return PodRequest(name=name, image="runpod/pytorch:2.4.0", gpu_type=gpu, gpu_count=1, cloud_type="ALL",
                      data_center=None, container_disk_gb=10, volume_gb=5, public_key="ssh-ed25519 AAAA op@test")


def ssh_endpoint(api: PodApi, pod_id: str) -> Endpoint:
    """The pod's public SSH endpoint once RunPod lists it and sshd sends its banner there."""
    endpoint = wait_until(lambda: (pod := api.get(pod_id)) and pod.ssh, timeout=60, what=f"pod {pod_id}'s SSH port")
    wait_until(lambda: (banner(endpoint) or b"").startswith(b"SSH-"), timeout=60, what=f"sshd of pod {pod_id}")
    return endpoint


def banner(endpoint: Endpoint) -> bytes | None:
    """What the SSH port sends first: None when the connection is refused, b"" when it closes at once."""
    try:
        with socket.create_connection((endpoint.ip, endpoint.port), timeout=5) as conn:
            conn.settimeout(5)
            return conn.recv(64)
    except ConnectionRefusedError:
        return None
    except (TimeoutError, ConnectionResetError):
        return b""


def post_from_pod(plane: RunPodServer, pod_id: str, query: str | None = None) -> tuple[int, dict]:
    """Run :data:`POST_FROM_POD` in the pod (docker exec: the container's environment, nothing else)."""
    result = plane.container(pod_id).exec_run(["python3", "-c", POST_FROM_POD, *([query] if query else [])])
    status, _, body = result.output.decode().strip().partition(" ")
    assert result.exit_code == 0 and status.isdigit(), result.output.decode()
    return int(status), json.loads(body)


def pid1_environment(plane: RunPodServer, pod_id: str) -> dict[str, str]:
    raw = plane.container(pod_id).exec_run(["cat", "/proc/1/environ"]).output.decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


# ----------------------------------------------------------------------------- a pod's own key


@pytest.mark.docker
def test_a_pod_terminates_itself_with_only_what_runpod_put_in_its_environment(host_plane: RunPodServer,
                                                                              api: PodApi) -> None:
    pod_id = api.create(pod_request("gpu-deploy-self-ending"))
    wait_until(lambda: host_plane.container(pod_id).status == "running", timeout=30, what="the pod's container")
    env = pid1_environment(host_plane, pod_id)
    assert env["RUNPOD_POD_ID"] == pod_id and env["RUNPOD_API_BASE_URL"] == host_plane.url
    pod_key = env["RUNPOD_API_KEY"]
    assert pod_key and pod_key != API_KEY and pod_key not in json.dumps(run_graphql_query(QUERY_POD, API_KEY))

    exec_id = host_plane.docker.api.exec_create(host_plane.pods[pod_id].container_id, ["python3", "-c", POST_FROM_POD])
    host_plane.docker.api.exec_start(exec_id, detach=True)  # the pod ends while its call runs: no answer to read
    wait_until(lambda: api.get(pod_id) is None, timeout=30, what=f"pod {pod_id} to end itself")

    assert host_plane.operations.count("podTerminate") == 1  # the pod's own call: this test made none
    (bill,) = host_plane.bills()
    assert bill.pod_id == pod_id and bill.ended_at is not None
    with pytest.raises(sdk_error.AuthenticationError):  # RunPod revokes the key with its pod
        run_graphql_query(generate_pod_query(pod_id), api_key=pod_key)


@pytest.mark.docker
def test_a_pods_key_cannot_touch_another_pod_or_the_account(host_plane: RunPodServer, api: PodApi) -> None:
    mine = api.create(pod_request("gpu-deploy-mine"))
    other = api.create(pod_request("gpu-deploy-other"))
    wait_until(lambda: host_plane.container(mine).status == "running", timeout=30, what="the pod's container")

    create = generate_pod_deployment_mutation("gpu-deploy-more", "img", "NVIDIA L40S", env={"PUBLIC_KEY": "k"})
    for query in (generate_pod_terminate_mutation(other), generate_pod_query(other), QUERY_POD, QUERY_GPU_TYPES,
                  create):
        assert post_from_pod(host_plane, mine, query) == (200, {"errors": [{"message": NOT_AUTHORISED}]}), query
    status, own = post_from_pod(host_plane, mine, generate_pod_query(mine))
    assert status == 200 and own["data"]["pod"]["id"] == mine
    assert {p.id: p.status for p in api.pods()} == {mine: "RUNNING", other: "RUNNING"}
    wrong_key = host_plane.container(mine).exec_run(["python3", "-c", POST_FROM_POD],
                                                    environment={"RUNPOD_API_KEY": "rp-pod-made-up"})
    assert wrong_key.output.decode().startswith("401 ")


# ----------------------------------------------------------------------------- faults


@pytest.mark.docker
def test_fail_terminate_makes_terminate_raise_twice_then_the_pod_ends(host_plane: RunPodServer, api: PodApi) -> None:
    pod_id = api.create(pod_request("gpu-deploy-sticky"))
    host_plane.fail_terminate(pod_id, times=2)
    for _ in range(2):
        with pytest.raises(PodError, match=re.escape(f"terminating pod {pod_id}: {INTERNAL_ERROR}")):
            api.terminate(pod_id)
        assert api.get(pod_id).status == "RUNNING" and host_plane.container(pod_id).status == "running"
    api.terminate(pod_id)
    assert api.get(pod_id) is None and host_plane.bills()[0].ended_at is not None


@pytest.mark.docker
def test_a_dropped_create_raises_while_the_pod_exists_under_its_name(host_plane: RunPodServer, api: PodApi) -> None:
    host_plane.drop_next_create(times=2)
    with pytest.raises(requests.ConnectionError):  # the SDK itself: the answer never came
        run_graphql_query(generate_pod_deployment_mutation("gpu-deploy-token-1", "img", "NVIDIA L40S"), API_KEY)
    with pytest.raises(PodError, match="while creating a pod with 1 x NVIDIA L40S"):
        api.create(pod_request("gpu-deploy-token-2"))
    made = {p.name: p for p in api.pods()}  # one pod per call, not two: the SDK did not retry the create
    assert {name: p.status for name, p in made.items()} == {"gpu-deploy-token-1": "RUNNING",
                                                             "gpu-deploy-token-2": "RUNNING"}
    assert [bill.name for bill in host_plane.bills()] == ["gpu-deploy-token-1", "gpu-deploy-token-2"]
    third = api.create(pod_request("gpu-deploy-token-3"))  # only the next two creates were dropped
    assert third not in {p.id for p in made.values()} and len(api.pods()) == 3


@pytest.mark.docker
@pytest.mark.parametrize("plane_fixture", ["runpod_host_server", "runpod_server"], ids=["host-network", "bridge"])
def test_kill_sshd_leaves_the_pod_running_with_a_runtime_while_ssh_gets_no_banner(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, api: PodApi, plane_fixture: str) -> None:
    plane: RunPodServer = request.getfixturevalue(plane_fixture)
    request.addfinalizer(plane.cleanup)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", plane.url)
    pod_id = api.create(pod_request("gpu-deploy-mute"))
    endpoint = ssh_endpoint(api, pod_id)

    plane.kill_sshd(pod_id)
    time.sleep(1)  # asserting an absence: a dead sshd that came back (a restart loop) would be listening by now
    pod = api.get(pod_id)
    assert (pod.status, pod.has_runtime, pod.ssh) == ("RUNNING", True, endpoint)
    assert plane.container(pod_id).status == "running"
    # On the host's network the port is closed (refused); Docker's proxy accepts and closes at once (b"").
    assert banner(endpoint) in ((None,) if plane.host_network else (None, b""))

    api.stop(pod_id)  # a restart of the pod starts its sshd again
    api.resume(pod_id, 1)
    assert ssh_endpoint(api, pod_id)


@pytest.mark.docker
def test_kill_sshd_while_the_pod_still_starts_keeps_its_sshd_from_coming_up(host_plane: RunPodServer,
                                                                           api: PodApi) -> None:
    pod_id = api.create(pod_request("gpu-deploy-early"))
    host_plane.kill_sshd(pod_id)  # the start script is still making host keys: sshd is not up yet
    container = host_plane.container(pod_id)

    def commands() -> list[str]:
        return container.exec_run(["ps", "-eo", "comm="]).output.decode().split()

    wait_until(lambda: not {"start.sh", "ssh-keygen"} & set(commands()), timeout=30, what="the start script's end")
    assert "sshd" not in commands() and container.status == "running"
    assert banner(api.get(pod_id).ssh) is None


# ----------------------------------------------------------------------------- bills


@pytest.mark.docker
def test_bills_charge_running_and_stopped_pods_until_termination(host_plane: RunPodServer, api: PodApi) -> None:
    before = time.time()
    l40s = api.create(pod_request("gpu-deploy-bill-l40s"))
    a6000 = api.create(pod_request("gpu-deploy-bill-a6000", gpu="NVIDIA RTX A6000"))
    after_create = time.time()
    api.stop(a6000)  # stopped, not terminated: it bills on
    api.terminate(l40s)
    after_terminate = time.time()

    first, second = host_plane.bills()
    assert (first.pod_id, first.name, first.cost_per_hr) == (l40s, "gpu-deploy-bill-l40s", 0.79)
    assert (second.pod_id, second.cost_per_hr, second.ended_at) == (a6000, 0.33, None)
    assert before <= first.created_at <= second.created_at <= after_create
    assert after_create <= first.ended_at <= after_terminate

    until = after_terminate + 3600
    expected = (0.79 * (first.ended_at - first.created_at) + 0.33 * (until - second.created_at)) / 3600
    assert host_plane.spend(until) == pytest.approx(expected)
    assert host_plane.spend(until + 3600) - host_plane.spend(until) == pytest.approx(0.33)  # only the stopped pod
    assert host_plane.spend() < host_plane.spend(until)

    over_http = control(host_plane, {"action": "bills"})
    assert [b["pod_id"] for b in over_http["bills"]] == [l40s, a6000] and over_http["pods"] == {a6000: "EXITED"}
    assert over_http["spend"] == pytest.approx(host_plane.spend(over_http["now"]))
    host_plane.cleanup()
    assert host_plane.bills() == [] and host_plane.spend() == 0.0


def control(plane: RunPodServer, command: dict, key: str = API_KEY) -> dict:
    request = urllib.request.Request(f"{plane.url}/control", data=json.dumps(command).encode(),
                                     headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


# ----------------------------------------------------------------------------- over HTTP, no Docker


def test_the_controls_refuse_a_pod_scoped_key_and_take_the_new_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    plane = RunPodServer(docker_client=None, pod_image="unused", api_key=API_KEY).start()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", plane.url)
    try:
        plane.pods["pod-a"] = ServerPod(
            id="pod-a", name="pod-a", image="img", gpu=plane.gpus["NVIDIA L40S"], gpu_count=1, cloud_type="ALL",
            volume_gb=0, container_disk_gb=10, mount="/workspace", env={}, api_key="rp-pod-key-of-pod-a",
            status="EXITED")
        with pytest.raises(urllib.error.HTTPError) as refused:
            control(plane, {"action": "reset_faults"}, key="rp-pod-key-of-pod-a")
        assert refused.value.code == 403
        assert control(plane, {"action": "fail_terminate", "pod": "pod-a", "times": 1}) == {"pods": {"pod-a": "EXITED"}}
        with pytest.raises(sdk_error.QueryError, match=INTERNAL_ERROR):
            run_graphql_query(generate_pod_terminate_mutation("pod-a"), api_key="rp-pod-key-of-pod-a")
        with pytest.raises(urllib.error.HTTPError) as bad:
            control(plane, {"action": "fail_terminate", "times": -2})
        assert bad.value.code == 400 and "times must be 0 or more, got -2" in json.loads(bad.value.read())["error"]
    finally:
        plane.stop()
