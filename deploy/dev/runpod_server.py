"""A local RunPod control plane whose pods are real containers: for tests and demos, never shipped.

It answers the GraphQL the official ``runpod`` SDK sends (point ``RUNPOD_API_BASE_URL`` at :attr:`url`),
recognised from the SDK's own query text (``podFindAndDeployOnDemand``, ``podRentInterruptable``,
``pod(input:``, ``myself { pods``, ``gpuTypes``, ``podStop``, ``podResume``, ``podTerminate``; and ``myself { id }``,
the question fab asks first), so a change in the SDK's queries breaks the tests rather than production. Answers follow RunPod's documented
shapes; errors come back as HTTP 200 with an ``errors`` list, a wrong key as HTTP 401, as RunPod does.
The operator's key may do everything; a pod's own key (its ``RUNPOD_API_KEY``) may only read, stop and
terminate that pod (``pod(input:``, ``podStop``, ``podTerminate``), anything else is answered with a
not-authorised error, and it stops working (401) once the pod is terminated.

Each pod is a Docker container from the pod image (:mod:`deploy.dev.podimage`: sshd, python, torch, no
Docker), whatever ``imageName`` says (that is the "pull"), with its ``env`` (``PUBLIC_KEY``), a Docker
volume at ``volumeMountPath`` (kept across stop and resume, removed on terminate) and port 22 published
on 127.0.0.1. ``runtime`` stays null for the pod's pull delay, then lists port 22 with ``isIpPublic``.
As on RunPod, the container's environment also has ``RUNPOD_POD_ID`` and ``RUNPOD_API_KEY``, a fresh
pod-scoped key (never the operator's); ``RUNPOD_API_BASE_URL`` (this server's url) is this plane's own
addition, which real RunPod does not set. The image's command runs as a child of a long-lived PID 1, as
on RunPod, so the container outlives its sshd.

``host_network=True`` runs pods on the host's network instead (sshd on a free loopback port, reported as
the public port of 22), so a pod reaches servers that listen on 127.0.0.1, such as the test S3 server.

Controls for tests (methods, and ``POST /control`` for another process): :meth:`refuse_capacity` (RunPod's
"no longer any instances available"), :meth:`lose_pod` (kill the container), :meth:`set_pull_delay`,
``public_ip = False`` (port 22 only on a private IP, so no public endpoint ever appears),
:meth:`fail_terminate` (podTerminate answers RunPod's internal error, the pod keeps running),
:meth:`drop_next_create` (the pod is made, then the connection closes without an answer), :meth:`kill_sshd`
(the pod stays RUNNING with a runtime, SSH no longer answers); :meth:`reset_faults` and :meth:`cleanup` undo them
all. :meth:`bills` and :meth:`spend` say what RunPod would have charged (``{"action": "bills"}`` over HTTP):
every pod since the last :meth:`cleanup`, terminated ones too. How a lost pod looks: RunPod stops a reclaimed
interruptible pod (``desiredStatus`` EXITED, ``runtime`` null, volume kept); a machine that fails leaves
the pod ``RUNNING`` with ``runtime`` null until RunPod notices. ``lose_pod(how="exited")`` and
``lose_pod(how="vanished")`` mimic the two.

One cohesive program (HTTP handler, GraphQL matching, pod bookkeeping, containers), hence its length.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deploy.dev.embedded import free_port
from deploy.pods.models import cloud_price

LABEL = "gpu-deploy.runpod-server"
NO_CAPACITY = "There are no longer any instances available with the requested specifications. Please refresh and try again."
NO_RESOURCES = "This machine does not have the resources to deploy your pod. Please try a different machine."

# PID 1 of every pod: Docker's init (tini, ``init=True``) runs this shell, which runs the image's own command
# (the pod image's start script, which ends in sshd) as a child and, once that exits, sleeps. So sshd can die
# (:meth:`RunPodServer.kill_sshd`) while the container, like a RunPod pod whose sshd crashed, keeps running:
# RunPod's images start sshd as a service and then ``sleep infinity``, it is never their PID 1.
COMMAND_PID_FILE = "/run/gpu-deploy-pod-command.pid"
KEEP_ALIVE = f'"$@" & echo $! > {COMMAND_PID_FILE}; wait; exec sleep infinity'

# Kill every live sshd in a pod (the listener and each session's) until none is left and the image's command
# is over (the start script execs sshd: a pod still making its host keys gets its sshd killed as it starts).
# Zombies are dead already (their sockets are closed). Gives up after about 30 s: exit 1 if an sshd lives.
KILL_SSHD = """
alive() {
    for stat in /proc/[0-9]*/stat; do
        read -r pid comm state rest < "$stat" 2>/dev/null || continue
        case "$comm" in "(sshd)"|"(sshd-session)") [ "$state" = Z ] || echo "$pid";; esac
    done
}
running() { read -r pid comm state rest < "/proc/$1/stat" 2>/dev/null && [ "$state" != Z ]; }
command=$(cat %s 2>/dev/null)
for attempt in $(seq 300); do
    pids=$(alive)
    if [ -n "$pids" ]; then kill -9 $pids 2>/dev/null
    elif [ -z "$command" ] || ! running "$command"; then exit 0
    fi
    sleep 0.1
done
pids=$(alive)
[ -z "$pids" ] || { echo "still alive: $pids"; exit 1; }
""" % COMMAND_PID_FILE

# RunPod's answer when something fails on its side (a podTerminate it could not carry out, for one).
INTERNAL_ERROR = "Something went wrong. Please try again later or contact support."
# What the SDK surfaces (``QueryError``) when a restricted key asks for something outside its permissions.
NOT_AUTHORISED = "Unauthorized: this API key has no permission for that operation."
POD_KEY_OPERATIONS = frozenset({"pod", "podStop", "podTerminate"})
"""What a pod-scoped key may do, and only to its own pod."""


@dataclass(frozen=True)
class GpuOffer:
    """One GPU type the server offers: RunPod's id and display name, memory, $/GPU-hour per cloud."""

    id: str
    name: str
    memory_gb: int
    secure_price: float | None
    community_price: float | None

    def price(self, cloud_type: str) -> float | None:
        return cloud_price(cloud_type, self.secure_price, self.community_price)

    def to_api(self, gpu_count: int = 1) -> dict[str, Any]:
        return {"id": self.id, "displayName": self.name, "memoryInGb": self.memory_gb, "manufacturer": "Nvidia",
                "maxGpuCount": 8, "cudaCores": 0, "secureCloud": self.secure_price is not None,
                "communityCloud": self.community_price is not None, "securePrice": self.secure_price,
                "communityPrice": self.community_price, "oneMonthPrice": None, "threeMonthPrice": None,
                "oneWeekPrice": None, "communitySpotPrice": None, "secureSpotPrice": None,
                "lowestPrice": {"minimumBidPrice": None,
                                "uninterruptablePrice": (self.price("ALL") or 0) * gpu_count}}


DEFAULT_GPUS = (
    GpuOffer("NVIDIA RTX A6000", "RTX A6000", 48, 0.49, 0.33),
    GpuOffer("NVIDIA L40S", "L40S", 48, 0.86, 0.79),
    GpuOffer("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, 0.34),
    GpuOffer("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 1.64, 1.19),
    GpuOffer("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 2.99, None),
)


@dataclass(frozen=True)
class KeyScope:
    """What one API key may do: everything (the operator's key: ``pod_id`` None) or its own pod only."""

    pod_id: str | None = None

    def allows(self, operation: str, pod_id: str | None) -> bool:
        return self.pod_id is None or (operation in POD_KEY_OPERATIONS and pod_id == self.pod_id)


OPERATOR = KeyScope()


@dataclass(frozen=True)
class Bill:
    """What RunPod would charge for one pod: its price from the create call until it was terminated.

    Wall-clock times (``time.time()``). A stopped pod bills on in this model until it is terminated: the
    rule a watcher is measured against.
    """

    pod_id: str
    name: str
    cost_per_hr: float
    created_at: float
    ended_at: float | None = None

    def dollars(self, until: float) -> float:
        """The charge from ``created_at`` to ``ended_at`` (or ``until``, whichever is first)."""
        end = until if self.ended_at is None else min(self.ended_at, until)
        return self.cost_per_hr * max(0.0, end - self.created_at) / 3600


@dataclass
class ServerPod:
    id: str
    name: str
    image: str
    gpu: GpuOffer
    gpu_count: int
    cloud_type: str
    volume_gb: int
    container_disk_gb: int
    mount: str
    env: dict[str, str]
    api_key: str = field(default="", repr=False)
    """The pod-scoped key in the pod's ``RUNPOD_API_KEY``: it may read, stop and terminate this pod only."""
    status: str = "RUNNING"
    container_id: str = ""
    host_port: int = 0
    """With host networking: the loopback port sshd listens on (else Docker's published port)."""
    ready_at: float = 0.0
    started_at: float = field(default_factory=time.monotonic)
    changed: str = ""

    @property
    def cost_per_hr(self) -> float:
        return round((self.gpu.price(self.cloud_type) or 0.0) * self.gpu_count, 4)


def _input_fields(query: str) -> tuple[dict[str, str], dict[str, str]]:
    """The scalar fields and the env list of a mutation's ``input: {...}``, as the SDK writes them."""
    env = dict(re.findall(r'\{\s*key:\s*"([^"]*)",\s*value:\s*"([^"]*)"\s*\}', query))
    body = re.sub(r"env:\s*\[.*?\]", "", query, flags=re.S)
    fields = {k: (quoted if quoted or raw.startswith('"') else raw)
              for k, raw, quoted in re.findall(r'(\w+):\s*("([^"]*)"|[^,\s}]+)', body)}
    return fields, env


def _pod_id_in(query: str) -> str | None:
    match = re.search(r'podId:\s*"([^"]+)"', query)
    return match.group(1) if match else None


class _Handler(BaseHTTPRequestHandler):
    server: "_HTTPServer"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        plane = self.server.plane
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        scope = plane.scope(self.headers.get("Authorization"))
        if scope is None:
            self._send(401, {"errors": [{"message": "Unauthorized"}]})
            return
        if self.path.split("?")[0] == "/control":
            self._control(plane, scope, body)
            return
        try:
            query = json.loads(body)["query"]
        except (ValueError, KeyError, TypeError):
            self._send(400, {"errors": [{"message": "Must provide query string."}]})
            return
        try:
            self._send(200, plane.answer(query, scope))
        except ConnectionDropped:
            self.close_connection = True  # nothing sent: the client's read fails as after a timed-out call

    def _control(self, plane: "RunPodServer", scope: KeyScope, body: bytes) -> None:
        if scope != OPERATOR:
            self._send(403, {"error": "The test controls take the operator's key, not a pod-scoped one."})
            return
        try:
            self._send(200, plane.control(json.loads(body)))
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            self._send(400, {"error": f"{exc.__class__.__name__}: {exc}"})

    def _send(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: tests read their own output
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    plane: "RunPodServer"


class QueryMismatch(Exception):
    """The SDK sent a query this server does not recognise: the SDK changed, so the tests should fail."""


class RunPodServer:
    """The control plane. ``start()`` serves on 127.0.0.1; ``stop()`` removes every pod container it made."""

    def __init__(self, docker_client: Any, pod_image: str, api_key: str = "rp-test-key",
                 gpus: tuple[GpuOffer, ...] = DEFAULT_GPUS, pull_delay: float = 0.0,
                 host_network: bool = False) -> None:
        self.docker = docker_client
        self.pod_image = pod_image
        self.api_key = api_key
        self.gpus = {g.id: g for g in gpus}
        self.pull_delay = pull_delay
        self.host_network = host_network
        self.public_ip = True
        self.pods: dict[str, ServerPod] = {}
        self.operations: list[str] = []
        self.mismatches: list[str] = []
        self._refused: set[str] = set()
        self._initial_pull_delay = pull_delay
        self._failing_terminates: dict[str | None, int] = {}
        self._dropped_creates = 0
        self._bills: dict[str, Bill] = {}
        self._lock = threading.RLock()
        self._instance = secrets.token_hex(4)
        self._http: _HTTPServer | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> "RunPodServer":
        self._http = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._http.plane = self
        threading.Thread(target=self._http.serve_forever, name="runpod-server", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        """The value for RUNPOD_API_BASE_URL (the SDK appends /graphql)."""
        assert self._http is not None, "start() the server first"
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.cleanup()

    def cleanup(self) -> None:
        """Remove every container and volume this server made, forget the bills and reset every fault (one
        test's pods, bills and faults never reach the next)."""
        if self.docker is not None:
            labels = {"label": f"{LABEL}={self._instance}"}
            for container in self.docker.containers.list(all=True, filters=labels):
                container.remove(force=True)
            for volume in self.docker.volumes.list(filters=labels):
                volume.remove(force=True)
        with self._lock:
            self.pods.clear()
            self._bills.clear()
            self.reset_faults()

    def reset_faults(self) -> None:
        """Undo every control: capacity, public IP, pull delay (back to the constructor's), failing calls."""
        with self._lock:
            self._refused.clear()
            self.public_ip = True
            self.pull_delay = self._initial_pull_delay
            self._failing_terminates.clear()
            self._dropped_creates = 0

    # ----------------------------------------------------------------- controls for tests

    def refuse_capacity(self, gpu_id: str, refuse: bool = True) -> None:
        """Create (and resume) calls for ``gpu_id`` fail with RunPod's no-capacity error."""
        with self._lock:
            (self._refused.add if refuse else self._refused.discard)(gpu_id)

    def set_pull_delay(self, seconds: float, pod_id: str | None = None) -> None:
        """Delay before ``runtime`` appears: for new pods, or from now for ``pod_id``."""
        with self._lock:
            if pod_id is None:
                self.pull_delay = seconds
            else:
                self.pods[pod_id].ready_at = time.monotonic() + seconds

    def lose_pod(self, pod_id: str, how: str = "exited") -> None:
        """Kill the pod's container: ``exited`` (reclaimed: EXITED) or ``vanished`` (machine gone: still RUNNING)."""
        if how not in ("exited", "vanished"):
            raise ValueError(f"how must be 'exited' or 'vanished', got {how!r}")
        with self._lock:
            pod = self.pods[pod_id]
            self.docker.containers.get(pod.container_id).kill()
            if how == "exited":
                self._set_status(pod, "EXITED", "Stopped by RunPod: the machine was reclaimed")

    def bills(self) -> list[Bill]:
        """One bill per pod created since the last :meth:`cleanup`, terminated ones too, oldest first."""
        with self._lock:
            return list(self._bills.values())

    def spend(self, until: float | None = None) -> float:
        """What RunPod would have charged for every pod, up to ``until`` (wall clock; default now)."""
        at = time.time() if until is None else until
        return sum(bill.dollars(at) for bill in self.bills())

    def fail_terminate(self, pod_id: str | None = None, times: int = 1) -> None:
        """The next ``times`` podTerminate calls for ``pod_id`` (None: for any pod) fail with RunPod's internal
        error (HTTP 200, ``errors``) and leave the pod running; ``times=0`` ends it."""
        if times < 0:
            raise ValueError(f"times must be 0 or more, got {times}")
        with self._lock:
            self._failing_terminates[pod_id] = times

    def drop_next_create(self, times: int = 1) -> None:
        """The next ``times`` create calls make their pod, then close the connection without an answer: a create
        that timed out after RunPod made the pod (the SDK raises ``requests.ConnectionError``)."""
        if times < 0:
            raise ValueError(f"times must be 0 or more, got {times}")
        with self._lock:
            self._dropped_creates = times

    def kill_sshd(self, pod_id: str) -> None:
        """Kill every sshd in the pod: it stays RUNNING with a runtime, but SSH no longer answers.

        On the host's network the connection is refused; through Docker's published port its proxy accepts
        and closes at once, without a banner. The container lives on (its PID 1 is not sshd, see
        :data:`KEEP_ALIVE`) with whatever else runs in it; no port is blocked, so this holds on the host's
        network too. A stop and resume starts sshd again. RuntimeError when an sshd survives.
        """
        with self._lock:
            container_id = self.pods[pod_id].container_id
        result = self.docker.containers.get(container_id).exec_run(["/bin/sh", "-c", KILL_SSHD])
        if result.exit_code != 0:
            raise RuntimeError(f"sshd in pod {pod_id} survived kill -9: {result.output.decode(errors='replace')}")

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        """The controls over HTTP (``POST /control`` with the API key), for a test or demo in another process.

        ``{"action": "refuse_capacity", "gpu": ID, "refuse": true}``, ``{"action": "lose_pod", "pod": ID,
        "how": "exited"}``, ``{"action": "pull_delay", "seconds": 5, "pod": ID or null}``,
        ``{"action": "public_ip", "value": false}``, ``{"action": "fail_terminate", "pod": ID or null,
        "times": 1}``, ``{"action": "drop_next_create", "times": 1}``, ``{"action": "kill_sshd", "pod": ID}``,
        ``{"action": "reset_faults"}``; the answer lists the pods by id with their status. ``{"action":
        "bills"}`` adds ``bills`` (:class:`Bill` fields), ``spend`` up to ``now`` and ``now`` (wall clock).
        """
        actions: dict[str, Callable[[dict[str, Any]], None]] = {
            "refuse_capacity": lambda c: self.refuse_capacity(c["gpu"], bool(c.get("refuse", True))),
            "lose_pod": lambda c: self.lose_pod(c["pod"], c.get("how", "exited")),
            "pull_delay": lambda c: self.set_pull_delay(float(c["seconds"]), c.get("pod")),
            "public_ip": lambda c: setattr(self, "public_ip", bool(c["value"])),
            "fail_terminate": lambda c: self.fail_terminate(c.get("pod"), int(c.get("times", 1))),
            "drop_next_create": lambda c: self.drop_next_create(int(c.get("times", 1))),
            "kill_sshd": lambda c: self.kill_sshd(c["pod"]),
            "reset_faults": lambda c: self.reset_faults(),
            "bills": lambda c: None,
        }
        action = command["action"]
        if action not in actions:
            raise ValueError(f"unknown action {action!r}")
        actions[action](command)
        with self._lock:
            answer: dict[str, Any] = {"pods": {pod.id: pod.status for pod in self.pods.values()}}
            if action == "bills":
                now = time.time()
                answer.update(bills=[asdict(bill) for bill in self.bills()], spend=self.spend(now), now=now)
            return answer

    def container(self, pod_id: str) -> Any:
        return self.docker.containers.get(self.pods[pod_id].container_id)

    def scope(self, authorization: str | None) -> KeyScope | None:
        """What the ``Authorization`` header's key may do; None for a key RunPod would answer with 401.

        A pod's key dies with the pod (terminated: 401), as RunPod revokes it.
        """
        if authorization == f"Bearer {self.api_key}":
            return OPERATOR
        with self._lock:
            for pod in self.pods.values():
                if authorization == f"Bearer {pod.api_key}":
                    return KeyScope(pod.id)
        return None

    # ----------------------------------------------------------------- GraphQL

    def answer(self, query: str, scope: KeyScope = OPERATOR) -> dict[str, Any]:
        """The JSON answer to one GraphQL document, matched by the operation names in the SDK's text.

        ``scope`` is what the caller's key may do (:meth:`scope`); anything else is answered with
        RunPod's not-authorised error. Raises :class:`ConnectionDropped` when :meth:`drop_next_create` holds.
        """
        routes = (
            (r"\bpodFindAndDeployOnDemand\s*\(", "podFindAndDeployOnDemand", self._deploy),
            (r"\bpodRentInterruptable\s*\(", "podRentInterruptable", self._deploy),
            (r"\bpodStop\s*\(", "podStop", self._stop),
            (r"\bpodResume\s*\(", "podResume", self._resume),
            (r"\bpodTerminate\s*\(", "podTerminate", self._terminate),
            (r"\bpod\s*\(\s*input:", "pod", self._get_pod),
            (r"\bmyself\s*\{\s*pods\s*\{", "myself", self._my_pods),
            (r"\bmyself\s*\{\s*id\s*\}", "myself", self._me),
            (r"\bgpuTypes\b", "gpuTypes", self._gpu_types),
        )
        for pattern, name, handler in routes:
            if re.search(pattern, query):
                return self._run(name, handler, query, scope)
        self.mismatches.append(query)
        return {"errors": [{"message": "Cannot query field on type Query (the local control plane does not know "
                                       "this operation)."}]}

    def _run(self, name: str, handler: Callable[[str], Any], query: str, scope: KeyScope) -> dict[str, Any]:
        with self._lock:
            self.operations.append(name)
            try:
                if not scope.allows(name, _pod_id_in(query)):
                    raise _Refusal(NOT_AUTHORISED)
                data = handler(query)
            except _Refusal as refusal:
                return {"errors": [{"message": str(refusal)}]}
        return {"data": {name: data} if name != "myself" else data}

    def _pod_id(self, query: str) -> str:
        pod_id = _pod_id_in(query)
        if pod_id is None:
            raise _Refusal("podId is required")
        return pod_id

    def _deploy(self, query: str) -> dict[str, Any]:
        fields, env = _input_fields(query)
        gpu, cloud = self._offer(fields)
        accepted = time.time()
        pod = ServerPod(id=secrets.token_hex(7), name=fields.get("name", ""), image=fields.get("imageName", ""),
                        gpu=gpu, gpu_count=int(fields.get("gpuCount", "1")), cloud_type=cloud,
                        volume_gb=int(fields.get("volumeInGb", "0")),
                        container_disk_gb=int(fields.get("containerDiskInGb", "10")),
                        mount=fields.get("volumeMountPath") or "/runpod-volume", env=env,
                        api_key="rp-pod-" + secrets.token_hex(16))
        self._run_container(pod)
        self.pods[pod.id] = pod
        self._bills[pod.id] = Bill(pod.id, pod.name, pod.cost_per_hr, created_at=accepted)
        if self._dropped_creates > 0:
            self._dropped_creates -= 1
            raise ConnectionDropped(f"the answer to the create call that made pod {pod.id}")
        return {"id": pod.id, "imageName": pod.image, "env": [f"{k}={v}" for k, v in env.items()],
                "machineId": f"m-{pod.id[:8]}", "machine": {"podHostId": f"{pod.id}-{self._instance}"}}

    def _offer(self, fields: dict[str, str]) -> tuple[GpuOffer, str]:
        """The GPU and cloud a create call asks for, or RunPod's refusal."""
        gpu = self.gpus.get(fields.get("gpuTypeId", ""))
        if gpu is None:
            raise _Refusal(f"Invalid GPU type: {fields.get('gpuTypeId')}")
        cloud = fields.get("cloudType", "ALL")
        if gpu.id in self._refused or gpu.price(cloud) is None:
            raise _Refusal(NO_CAPACITY)
        return gpu, cloud

    def _run_container(self, pod: ServerPod) -> None:
        labels = {LABEL: self._instance, f"{LABEL}.pod": pod.id}
        volume = self.docker.volumes.create(name=f"gpu-deploy-pod-{pod.id}", labels=labels)
        environment = {**pod.env, **self._pod_variables(pod)}
        network: dict[str, Any] = {"ports": {"22/tcp": ("127.0.0.1", None)}}
        if self.host_network:
            pod.host_port = free_port()
            environment.update(SSHD_PORT=str(pod.host_port), SSHD_LISTEN="127.0.0.1")
            network = {"network_mode": "host"}
        container = self.docker.containers.run(
            self.pod_image, detach=True, name=f"gpu-deploy-pod-{pod.id}", labels=labels, environment=environment,
            volumes={volume.name: {"bind": pod.mount, "mode": "rw"}}, init=True,
            entrypoint=["/bin/sh", "-c", KEEP_ALIVE, "pod-init"], command=self._image_command(), **network)
        pod.container_id = container.id
        pod.ready_at = time.monotonic() + self.pull_delay
        self._set_status(pod, "RUNNING", "Rented by User")

    def _pod_variables(self, pod: ServerPod) -> dict[str, str]:
        """What RunPod puts in every pod's environment, plus where this plane listens.

        ``RUNPOD_POD_ID`` and a pod-scoped ``RUNPOD_API_KEY`` are RunPod's; ``RUNPOD_API_BASE_URL`` is this
        plane's own addition (real pods reach api.runpod.io, the SDK's default). The url is on loopback, so
        only pods on the host's network (``host_network=True``) can call it.
        """
        return {"RUNPOD_POD_ID": pod.id, "RUNPOD_API_KEY": pod.api_key, "RUNPOD_API_BASE_URL": self.url}

    def _image_command(self) -> list[str]:
        """The pod image's own entrypoint and command, which :data:`KEEP_ALIVE` runs as PID 1's child."""
        config = self.docker.images.get(self.pod_image).attrs["Config"]
        return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]

    def _set_status(self, pod: ServerPod, status: str, why: str) -> None:
        pod.status = status
        pod.started_at = time.monotonic()
        stamp = datetime.now(timezone.utc).strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)")
        pod.changed = f"{why}: {stamp}"

    def _stop(self, query: str) -> dict[str, Any]:
        pod = self._known(self._pod_id(query))
        container = self.docker.containers.get(pod.container_id)
        if container.status == "running":
            container.stop(timeout=10)
        self._set_status(pod, "EXITED", "Exited by user")
        return {"id": pod.id, "desiredStatus": pod.status}

    def _resume(self, query: str) -> dict[str, Any]:
        pod = self._known(self._pod_id(query))
        if pod.gpu.id in self._refused:
            raise _Refusal(NO_RESOURCES)
        self.docker.containers.get(pod.container_id).start()
        pod.ready_at = time.monotonic()  # the image is on the machine already
        self._set_status(pod, "RUNNING", "Resumed by user")
        return {"id": pod.id, "desiredStatus": pod.status, "imageName": pod.image,
                "env": [f"{k}={v}" for k, v in pod.env.items()], "machineId": f"m-{pod.id[:8]}",
                "machine": {"podHostId": f"{pod.id}-{self._instance}"}}

    def _terminate(self, query: str) -> None:
        pod_id = self._pod_id(query)
        if self._take_failing_terminate(pod_id):
            raise _Refusal(INTERNAL_ERROR)
        pod = self._known(pod_id)
        self.docker.containers.get(pod.container_id).remove(force=True)
        self.docker.volumes.get(f"gpu-deploy-pod-{pod.id}").remove(force=True)
        del self.pods[pod.id]
        if pod.id in self._bills:
            self._bills[pod.id] = replace(self._bills[pod.id], ended_at=time.time())
        return None

    def _take_failing_terminate(self, pod_id: str) -> bool:
        for key in (pod_id, None):
            if self._failing_terminates.get(key, 0) > 0:
                self._failing_terminates[key] -= 1
                return True
        return False

    def _known(self, pod_id: str) -> ServerPod:
        if pod_id not in self.pods:
            raise _Refusal(f"Pod not found: {pod_id}")
        return self.pods[pod_id]

    def _get_pod(self, query: str) -> dict[str, Any] | None:
        pod = self.pods.get(self._pod_id(query))
        return self._pod_json(pod) if pod else None

    def _me(self, query: str) -> dict[str, Any]:
        return {"myself": {"id": "user-local-control-plane"}}

    def _my_pods(self, query: str) -> dict[str, Any]:
        return {"myself": {"pods": [self._pod_json(p) for p in self.pods.values()]}}

    def _gpu_types(self, query: str) -> list[dict[str, Any]]:
        wanted = re.search(r'gpuTypes\s*\(\s*input:\s*\{\s*id:\s*"([^"]+)"', query)
        count = re.search(r"gpuCount:\s*(\d+)", query)
        offers = [self.gpus[wanted.group(1)]] if wanted and wanted.group(1) in self.gpus else (
            [] if wanted else list(self.gpus.values()))
        return [g.to_api(int(count.group(1)) if count else 1) for g in offers]

    def _runtime(self, pod: ServerPod) -> dict[str, Any] | None:
        """RunPod's ``runtime``: null until the pull delay passed and while the container is not running."""
        if pod.status != "RUNNING" or time.monotonic() < pod.ready_at:
            return None
        container = self.docker.containers.get(pod.container_id)
        if container.status != "running":
            return None
        bound = (container.attrs["NetworkSettings"]["Ports"] or {}).get("22/tcp") or []
        public = pod.host_port or (int(bound[0]["HostPort"]) if bound else 0)
        if not public:
            return None
        ports = [{"ip": "127.0.0.1", "isIpPublic": True, "privatePort": 22, "publicPort": public, "type": "tcp"}]
        if not self.public_ip:
            ports = [{"ip": "10.65.0.2", "isIpPublic": False, "privatePort": 22, "publicPort": 22, "type": "tcp"}]
        return {"uptimeInSeconds": int(time.monotonic() - pod.started_at), "ports": ports, "gpus": []}

    def _pod_json(self, pod: ServerPod) -> dict[str, Any]:
        runtime = self._runtime(pod)
        return {"id": pod.id, "containerDiskInGb": pod.container_disk_gb, "costPerHr": pod.cost_per_hr,
                "desiredStatus": pod.status, "dockerArgs": "", "dockerId": None,
                "env": [f"{k}={v}" for k, v in pod.env.items()], "gpuCount": pod.gpu_count, "imageName": pod.image,
                "lastStatusChange": pod.changed, "machineId": f"m-{pod.id[:8]}", "memoryInGb": 62, "name": pod.name,
                "podType": "RESERVED", "port": None, "ports": "22/tcp",
                "uptimeSeconds": int(time.monotonic() - pod.started_at) if runtime else 0, "vcpuCount": 8,
                "volumeInGb": pod.volume_gb, "volumeMountPath": pod.mount, "runtime": runtime,
                "machine": {"gpuDisplayName": pod.gpu.name}}


class _Refusal(Exception):
    """An answer RunPod gives as ``errors`` with HTTP 200."""


class ConnectionDropped(Exception):
    """:meth:`RunPodServer.answer` made the change but sends no answer: the HTTP handler closes the connection."""


def main() -> None:  # pragma: no cover - for people: python -m deploy.dev.runpod_server
    """Serve until Ctrl-C; prints the two settings that point fab at it."""
    import docker

    from deploy.dev.podimage import ensure_pod_image

    client = docker.from_env(timeout=900)
    server = RunPodServer(client, ensure_pod_image(client).tag, api_key="rp-local-" + secrets.token_hex(6),
                          host_network=True).start()
    print(f"RUNPOD_API_BASE_URL={server.url}\nRUNPOD_API_KEY={server.api_key}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
