"""The native runtime (hosts without Docker, e.g. RunPod pods): ``NativeRuntime`` and its parts.

runtime.py the strategy (desired state, handlers) - plan.py desired/gathered/planned, pure - venv.py the
virtualenv - service.py the supervised process - layout.py its own files on the host. What code travels
and how is runtime-neutral: deploy.runtimes.code.
"""

from deploy.runtimes.native.runtime import NativeRuntime

__all__ = ["NativeRuntime"]
