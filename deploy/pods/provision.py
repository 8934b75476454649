"""Doing the plan: create a pod with the first GPU type that has capacity, then wait for its SSH port.

RunPod answers a create call at once, but the pod's ``runtime`` stays null while the machine pulls the
image (minutes for a large PyTorch image), and a ``runtime.ports`` entry for port 22 with a public IP
appears only after that. So :func:`wait_for_ssh` polls the API (not SSH) and reports each change of
state once, with the time elapsed; a watcher can call the same two functions to replace a lost pod.

Progress goes to an observer (any callable taking one line of text), so the library has no idea
whether a console, a log or a run record is listening.

Example::

    pod_id, request = create_first(api, plan.attempts, print)
    pod = wait_for_ssh(api, pod_id, timeout=900, progress=print)
    print(pod.ssh.host_spec())          # root@203.0.113.7:40122
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deploy.pods.api import PodApi
from deploy.pods.models import RUNNING, NoCapacityError, Pod, PodError, PodRequest

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


def wait_for_ssh(api: PodApi, pod_id: str, timeout: float, progress: Progress = _quiet, interval: float = 2.0,
                 clock: Clock | None = None) -> Pod:
    """Poll until the pod is RUNNING with a public port for 22; one progress line per change of state.

    A pod that stops, disappears or has no public port within ``timeout`` seconds is a :class:`PodError`
    that says what it was doing (the pod is left as it is: ``fab pods.down`` decides what to do with it).
    """
    clock = clock or Clock()
    started = clock.now()
    last = ""
    pod: Pod | None = None
    while True:
        pod = api.get(pod_id)
        elapsed = clock.now() - started
        if pod is None:
            raise PodError(f"Pod {pod_id} disappeared while starting (terminated by someone, or by RunPod).")
        if pod.stage != last:
            last = pod.stage
            progress(f"{elapsed:5.0f} s  {pod_id}: {last}")
        if pod.status == RUNNING and pod.ssh is not None:
            return pod
        if pod.status not in (RUNNING, ""):
            raise PodError(f"Pod {pod_id} is {pod.status} instead of starting; see it in RunPod's console, then "
                           f"fab pods.down {pod_id}.")
        if elapsed >= timeout:
            raise PodError(f"Pod {pod_id} has no public SSH port after {timeout:.0f} s (it is {pod.stage}); wait "
                           f"longer with --timeout, or remove it with fab pods.down {pod_id}.")
        clock.sleep(min(interval, max(0.0, timeout - elapsed)))
