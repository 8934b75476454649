"""The native runtime (hosts without Docker, e.g. RunPod pods): ``NativeRuntime`` and its parts.

runtime.py the strategy (desired state, handlers) - plan.py desired/gathered/planned, pure - tree.py
what of the working tree ships - shipped.py what of gpu-deploy ships - venv.py the virtualenv -
service.py the supervised process - sync.py code transfer - layout.py where things live on the host.
"""

from deploy.runtimes.native.runtime import NativeRuntime

__all__ = ["NativeRuntime"]
