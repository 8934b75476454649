"""A thin typed wrapper over the official ``runpod`` SDK: GPU types, create, get, list, stop, resume, terminate.

The SDK posts GraphQL to ``$RUNPOD_API_BASE_URL/graphql`` (default https://api.runpod.io) with the key
as a Bearer token; tests point that variable at the local control plane. Where the SDK's own
query lacks a field (GPU prices for every type at once) the documented query goes through the SDK's
``run_graphql_query``, never a second HTTP client. Every failure becomes one :class:`PodError`
sentence; the key itself never appears in one.

Example::

    api = PodApi(settings.runpod_api_key)
    for gpu in api.gpu_types():
        print(gpu.id, gpu.secure_price)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from deploy.errors import ConfigError
from deploy.pods.models import ApiUnreachable, GpuType, NoCapacityError, Pod, PodError, PodRequest
from deploy.pods.plan import is_capacity_error
from deploy.settings import Secret

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

# The SDK keeps the key in a module global (stop/resume/terminate take no key argument).
_SDK_LOCK = threading.Lock()


def base_url() -> str:
    return os.environ.get("RUNPOD_API_BASE_URL", DEFAULT_BASE_URL)


class PodApi:
    """RunPod's pod API with typed answers. Build it with the RUNPOD_API_KEY setting."""

    def __init__(self, api_key: Secret | None) -> None:
        if not api_key:
            raise ConfigError("RUNPOD_API_KEY is not set; create a key in RunPod's console (Settings > API Keys) "
                              "and put it in .env or the environment.")
        self._key = api_key

    def _call(self, what: str, action: Callable[[Any], T]) -> T:
        """Run ``action(runpod)`` with the key set, turning the SDK's errors into one sentence."""
        import requests
        import runpod
        from runpod import error

        with _SDK_LOCK:
            runpod.api_key = self._key.reveal()
            try:
                return action(runpod)
            except error.AuthenticationError:
                raise ConfigError(f"RunPod refused RUNPOD_API_KEY (401 from {base_url()}); check the key in "
                                  "RunPod's console (Settings > API Keys).") from None
            except error.QueryError as exc:
                message = str(exc).strip().rstrip(".")
                if is_capacity_error(message):
                    raise NoCapacityError(f"RunPod has no capacity while {what}: {message}.") from None
                raise PodError(f"RunPod refused {what}: {message}.") from None
            except requests.RequestException as exc:
                raise ApiUnreachable(f"Cannot reach the RunPod API at {base_url()} while {what} "
                               f"({exc.__class__.__name__}); check the network.") from None
            except ValueError as exc:  # the SDK's own checks (an unknown GPU type) and a non-JSON answer
                raise PodError(f"RunPod refused {what}: {exc}.") from None
            finally:
                runpod.api_key = None

    def gpu_types(self) -> list[GpuType]:
        """Every GPU type with memory and on-demand prices per GPU-hour."""
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
