"""Doing the plan: create a pod with the first GPU type that has capacity, then wait for its SSH port.

RunPod answers a create call at once, but the pod's ``runtime`` stays null while the machine pulls the
image (minutes for a large PyTorch image), and a ``runtime.ports`` entry for port 22 with a public IP
appears only after that, a moment before sshd answers on it. So :func:`wait_for_ssh` polls the API (then
the port, for sshd's banner) and reports each change of state once, with the time elapsed; a watcher
can call the same two functions to replace a lost pod.

Progress goes to an observer (any callable taking one line of text), so the library has no idea
whether a console, a log or a run record is listening.

Example::

    pod_id, request = create_first(api, plan.attempts, print)
    pod = wait_for_ssh(api, pod_id, timeout=900, progress=print)
    print(pod.ssh.host_spec())          # root@203.0.113.7:40122
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deploy.pods.api import PodApi
from deploy.pods.models import RUNNING, Endpoint, NoCapacityError, Pod, PodError, PodRequest

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def create_first(api: PodApi, attempts: Sequence[PodRequest], progress: Progress = _quiet) -> tuple[str, PodRequest]:
    """Try each create call in order; the first with capacity wins. None: one sentence naming every try."""
    tried: list[str] = []
    for request in attempts:
        try:
            pod_id = api.create(request)
        except NoCapacityError:
            tried.append(request.describe())
            progress(f"no capacity for {request.describe()}")
            continue
        progress(f"created pod {pod_id} ({request.name}) with {request.describe()}")
        return pod_id, request
    raise NoCapacityError(f"RunPod has no capacity for any GPU type tried: {'; '.join(tried)}; add types to "
                          "POD_GPU_TYPES, allow POD_CLOUD_TYPE=ALL or other POD_DATA_CENTERS, or try again later.")


@dataclass
class Clock:
    """Time and sleep, passed in so tests of the waiting loop need not wait."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def ssh_answers(endpoint: Endpoint, timeout: float = 3.0) -> bool:
    """True once the port sends an SSH banner: RunPod lists the port as soon as the container runs, before sshd is up."""
    try:
        with socket.create_connection((endpoint.ip, endpoint.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4) == b"SSH-"
    except OSError:
        return False


def wait_for_ssh(api: PodApi, pod_id: str, timeout: float, progress: Progress = _quiet, interval: float = 2.0,
                 clock: Clock | None = None, probe: Callable[[Endpoint], bool] = ssh_answers) -> Pod:
    """Poll until the pod is RUNNING with a public port for 22 where sshd answers; one line per change of state.

    A pod that stops, disappears or has no answering public port within ``timeout`` seconds is a
    :class:`PodError` that says what it was doing (the pod is left as it is: ``fab pods.down`` decides).
    """
    clock = clock or Clock()
    started = clock.now()
    last = ""
    while True:
        pod = api.get(pod_id)
        elapsed = clock.now() - started
        if pod is None:
            raise PodError(f"Pod {pod_id} disappeared while starting (terminated by someone, or by RunPod).")
        ready = pod.status == RUNNING and pod.ssh is not None and probe(pod.ssh)
        stage = pod.stage if ready or pod.ssh is None else f"{pod.stage}, sshd not answering yet"
        if stage != last:
            last = stage
            progress(f"{elapsed:5.0f} s  {pod_id}: {stage}")
        if ready:
            return pod
        if pod.status not in (RUNNING, ""):
            raise PodError(f"Pod {pod_id} is {pod.status} instead of starting; see it in RunPod's console, then "
                           f"fab pods.down --pod {pod_id}.")
        if elapsed >= timeout:
            raise PodError(f"Pod {pod_id} has no public SSH port after {timeout:.0f} s (it is {stage}); wait "
                           f"longer with --timeout, or remove it with fab pods.down --pod {pod_id}.")
        clock.sleep(min(interval, max(0.0, timeout - elapsed)))
