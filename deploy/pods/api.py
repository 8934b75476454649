"""A thin typed wrapper over the official ``runpod`` SDK: GPU types, create, get, list, stop, resume, terminate.

The SDK posts GraphQL to ``$RUNPOD_API_BASE_URL/graphql`` (default https://api.runpod.io) with the key
as a Bearer token; tests point that variable at the local control plane. Where the SDK's own
query lacks a field (GPU prices for every type at once) the documented query goes through the SDK's
``run_graphql_query``, never a second HTTP client. Every failure becomes one :class:`PodError`
sentence; the key itself never appears in one.

Every call connects within CONNECT_TIMEOUT_SECONDS (:class:`_BoundedRequests`), and :meth:`PodApi.reach`
asks one small question first, so a task learns in seconds that the API is dead, is not RunPod's (a web
page), or refuses the key.

Example::

    api = PodApi.from_settings(settings)
    api.reach()
    for gpu in api.gpu_types():
        print(gpu.id, gpu.secure_price)
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, TypeVar

from deploy.errors import ConfigError
from deploy.pods.models import ApiUnreachable, GpuType, NoCapacityError, Pod, PodError, PodRequest
from deploy.pods.plan import is_capacity_error
from deploy.reach import why
from deploy.settings import Secret, Settings, missing_sentence
from deploy.storage.bucket import address

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.runpod.io"

# The documented gpuTypes fields (https://docs.runpod.io/sdks/graphql/manage-pods): the SDK's get_gpus()
# asks only for id, name and memory, and get_gpu() costs one request per type.
GPU_PRICES_QUERY = """
query GpuTypes {
  gpuTypes {
    id
    displayName
    memoryInGb
    secureCloud
    communityCloud
    securePrice
    communityPrice
  }
}
"""

REACH_QUERY = "query Reach { myself { id } }"
"""The smallest question RunPod's API answers for a key: who it belongs to."""

API_READ_TIMEOUT = 30.0
"""Seconds an API call may wait for its answer once connected (the SDK's own fixed timeout; a create is slow)."""

# The SDK keeps the key in a module global (stop/resume/terminate take no key argument).
_SDK_LOCK = threading.Lock()


def _sdk() -> ModuleType:
    """The ``runpod`` package, imported without the second its import spends naming the CPU, and without the
    logging it sets up.

    ``runpod/__init__`` imports the SDK's serverless worker, whose debug module asks py-cpuinfo for the
    processor's name at import time; py-cpuinfo answers from a child Python that sleeps a second to count clock
    ticks (py-cpuinfo issue 205). No operator's task runs that worker, so while the SDK is imported the name comes
    from the platform module instead: every API task starts about 1.2 s sooner. Its upload module also calls
    ``logging.basicConfig(level=INFO)``, which would print every library's records from then on (paramiko's
    traceback of a connection a lost pod dropped, for one); the root logger is put back as it was.
    """
    with _SDK_LOCK, _quiet_import():
        import runpod
    return runpod


@contextmanager
def _quiet_import() -> Iterator[None]:
    """While the block runs, py-cpuinfo (when installed) names the CPU from ``platform``; afterwards it and the
    root logger's handlers and level are as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import cpuinfo
    except ImportError:  # an SDK that no longer needs it
        cpuinfo = None
    real = getattr(cpuinfo, "get_cpu_info", None)
    if real is not None:
        cpuinfo.get_cpu_info = lambda: {"brand_raw": platform.machine()}
    try:
        yield
    finally:
        if real is not None:
            cpuinfo.get_cpu_info = real
        root.handlers[:] = handlers
        root.setLevel(level)


def base_url() -> str:
    return os.environ.get("RUNPOD_API_BASE_URL", DEFAULT_BASE_URL)


def base_url_fix() -> str:
    """What to check when the API's address is wrong: the variable and where it came from."""
    if os.environ.get("RUNPOD_API_BASE_URL"):
        return "RUNPOD_API_BASE_URL (from the environment)"
    return "the network (RUNPOD_API_BASE_URL is not set: the API is RunPod's own)"


class _BoundedRequests:
    """``requests`` as the SDK's GraphQL call uses it, with our timeouts instead of its fixed ``timeout=30``.

    The SDK posts with a bare ``requests.post(..., timeout=30)`` (runpod/api/graphql.py): no session to mount
    an adapter on, no setting. :meth:`PodApi._call` puts this in the SDK module's place while it holds the
    SDK's lock (as it sets the SDK's key there), so a dead API fails after our connect timeout, not 30 s,
    and the answer is kept for the sentence when it was not JSON.
    """

    def __init__(self, connect: float, read: float) -> None:
        self.timeout = (connect, read)
        self.last: Any = None

    def post(self, url: str, **kwargs: Any) -> Any:
        import requests

        kwargs["timeout"] = self.timeout
        self.last = requests.post(url, **kwargs)
        return self.last

    def __getattr__(self, name: str) -> Any:
        import requests

        return getattr(requests, name)


def _answered(response: Any) -> str:
    """What a non-JSON answer was: ``a web page (HTTP 200)``."""
    if response is None:
        return "something that is not JSON"
    html = "html" in str(response.headers.get("content-type", "")).lower()
    return f"{'a web page' if html else 'something that is not JSON'} (HTTP {response.status_code})"


class PodApi:
    """RunPod's pod API with typed answers. Build it with the RUNPOD_API_KEY setting.

    ``connect_timeout`` (CONNECT_TIMEOUT_SECONDS): how long a connect to the API may take, in every call.
    """

    def __init__(self, api_key: Secret | None, connect_timeout: float = 10.0, key_fix: str = "RUNPOD_API_KEY") -> None:
        if not api_key:
            raise ConfigError(missing_sentence(["RUNPOD_API_KEY"]))
        self._key = api_key
        self.connect_timeout = connect_timeout
        self.key_fix = key_fix

    @classmethod
    def from_settings(cls, settings: Settings) -> "PodApi":
        """The API with the settings' key and CONNECT_TIMEOUT_SECONDS; no key: the missing-settings sentence."""
        settings.require("RUNPOD_API_KEY")
        return cls(settings.runpod_api_key, float(settings.connect_timeout_seconds), settings.check("RUNPOD_API_KEY"))

    def reach(self, timeout: float | None = None) -> None:
        """Fail in seconds, in one sentence, unless RunPod's API answers this key (one small query)."""
        _sdk()
        from runpod.api.graphql import run_graphql_query

        wait = timeout or self.connect_timeout
        self._call("checking the key", lambda rp: run_graphql_query(REACH_QUERY, api_key=rp.api_key),
                   read_timeout=wait)

    def _call(self, what: str, action: Callable[[Any], T], read_timeout: float = API_READ_TIMEOUT) -> T:
        """Run ``action(runpod)`` with the key set, turning the SDK's errors into one sentence."""
        import requests

        runpod = _sdk()
        from runpod import error
        from runpod.api import graphql

        bounded = _BoundedRequests(self.connect_timeout, read_timeout)
        with _SDK_LOCK:
            runpod.api_key = self._key.reveal()
            sdk_requests, graphql.requests = graphql.requests, bounded  # type: ignore[attr-defined]
            try:
                return action(runpod)
            except error.AuthenticationError:
                raise ConfigError(f"RunPod refused the API key (401 from {base_url()}); check {self.key_fix} in "
                                  "RunPod's console under Settings > API Keys.") from None
            except error.QueryError as exc:
                message = str(exc).strip().rstrip(".")
                if is_capacity_error(message):
                    raise NoCapacityError(f"RunPod has no capacity while {what}: {message}.") from None
                raise PodError(f"RunPod refused {what}: {message}.") from None
            except requests.exceptions.JSONDecodeError:
                raise PodError(f"{base_url()} is not RunPod's API: it answered {_answered(bounded.last)} while "
                               f"{what}; check {base_url_fix()}.") from None
            except requests.RequestException as exc:
                host, port = address(base_url())
                reason = why(exc, host, port, self.connect_timeout, read_timeout)
                raise ApiUnreachable(f"Cannot reach the RunPod API at {base_url()} while {what}: {reason}; check "
                                     f"{base_url_fix()}.") from None
            except ValueError as exc:  # the SDK's own checks (an unknown GPU type)
                raise PodError(f"RunPod refused {what}: {exc}.") from None
            finally:
                graphql.requests = sdk_requests  # type: ignore[attr-defined]
                runpod.api_key = None

    def gpu_types(self) -> list[GpuType]:
        """Every GPU type with memory and on-demand prices per GPU-hour."""
        _sdk()
        from runpod.api.graphql import run_graphql_query

        raw = self._call("listing GPU types", lambda rp: run_graphql_query(GPU_PRICES_QUERY, api_key=rp.api_key))
        return [GpuType.from_api(gpu) for gpu in raw["data"]["gpuTypes"]]

    def create(self, request: PodRequest) -> str:
        """Create one on-demand pod; returns its id. :class:`NoCapacityError` when no machine fits."""
        def create(rp: Any) -> dict[str, Any]:
            return rp.create_pod(
                name=request.name, image_name=request.image, gpu_type_id=request.gpu_type,
                cloud_type=request.cloud_type, support_public_ip=True, start_ssh=True,
                data_center_id=request.data_center, gpu_count=request.gpu_count, volume_in_gb=request.volume_gb,
                container_disk_in_gb=request.container_disk_gb, ports=request.ports,
                volume_mount_path=request.volume_mount_path, env={"PUBLIC_KEY": request.public_key})

        answer = self._call(f"creating a pod with {request.describe()}", create)
        if not answer or not answer.get("id"):
            raise PodError(f"RunPod answered the create call for {request.describe()} without a pod id.")
        return str(answer["id"])

    def get(self, pod_id: str) -> Pod | None:
        """The pod, or None when RunPod no longer knows it (terminated)."""
        raw = self._call(f"reading pod {pod_id}", lambda rp: rp.get_pod(pod_id))
        return Pod.from_api(raw) if raw else None

    def pods(self) -> list[Pod]:
        """Every pod of the account (filter with :func:`deploy.pods.plan.project_pods`)."""
        return [Pod.from_api(raw) for raw in self._call("listing pods", lambda rp: rp.get_pods()) or []]

    def stop(self, pod_id: str) -> None:
        self._call(f"stopping pod {pod_id}", lambda rp: rp.stop_pod(pod_id))

    def resume(self, pod_id: str, gpu_count: int) -> None:
        self._call(f"resuming pod {pod_id}", lambda rp: rp.resume_pod(pod_id, gpu_count))

    def terminate(self, pod_id: str) -> None:
        self._call(f"terminating pod {pod_id}", lambda rp: rp.terminate_pod(pod_id))
