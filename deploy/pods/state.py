"""Which pods this project created and where their SSH is: ``.gpu-deploy/pods.json`` in the project folder.

``fab pods.up`` writes the new pod's ``root@ip:port`` here, so ``fab deploy-runpod``, ``status``, ``logs``
... find the host without the operator editing ``.env`` (:func:`known_hosts`, used when RUNPOD_HOST is
unset). ``fab pods`` refreshes it from the API and ``fab pods.down`` removes the pod. The folder never
ships to a host (the native runtime's tree sync always leaves ``.gpu-deploy/`` out), and the file holds
no secret: pod ids, names and addresses.

Example::

    record_pod(Path("."), pod)                 # after pods.up
    known_hosts()                              # ['root@203.0.113.7:40122']
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deploy.errors import ConfigError
from deploy.pods.models import RUNNING, Pod

STATE_FILE = Path(".gpu-deploy") / "pods.json"


def state_path(folder: str | os.PathLike[str] = ".") -> Path:
    return Path(folder) / STATE_FILE


def load(folder: str | os.PathLike[str] = ".") -> dict[str, dict[str, Any]]:
    """Pod id -> its entry (name, host, gpu, cost_per_hour); empty when the file does not exist."""
    path = state_path(folder)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); remove it and run fab pods to rebuild it.") from None
    pods = data.get("pods") if isinstance(data, dict) else None
    return {str(k): v for k, v in pods.items() if isinstance(v, dict)} if isinstance(pods, dict) else {}


def _save(folder: str | os.PathLike[str], pods: dict[str, dict[str, Any]]) -> None:
    """Write atomically (temp file + rename), so a crash never leaves half a file."""
    path = state_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = path.parent / ".gitignore"
    if not ignore.exists():  # local state, like .pytest_cache: git leaves the folder alone without a rule
        ignore.write_text("# gpu-deploy's local state; never committed\n*\n")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pods-", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump({"pods": pods}, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def _entry(pod: Pod) -> dict[str, Any]:
    ssh = pod.ssh if pod.status == RUNNING else None
    return {"name": pod.name, "host": ssh.host_spec() if ssh else None, "gpu": pod.gpu, "gpu_count": pod.gpu_count,
            "cost_per_hour": pod.cost_per_hr, "status": pod.status}


def record_pod(folder: str | os.PathLike[str], pod: Pod) -> None:
    """Remember ``pod`` (its SSH address when it is running with one)."""
    pods = load(folder)
    pods[pod.id] = _entry(pod)
    _save(folder, pods)


def forget_pod(folder: str | os.PathLike[str], pod_id: str) -> None:
    pods = load(folder)
    if pods.pop(pod_id, None) is not None:
        _save(folder, pods)


def refresh(folder: str | os.PathLike[str], project: Iterable[Pod]) -> None:
    """Make the file agree with the API: the project's pods as they are now, gone pods dropped."""
    current = {pod.id: _entry(pod) for pod in project}
    if current != load(folder) and (current or state_path(folder).exists()):
        _save(folder, current)


def known_hosts(folder: str | os.PathLike[str] = ".") -> list[str]:
    """``user@ip:port`` of every running pod this project created, for when RUNPOD_HOST is unset."""
    return [entry["host"] for _, entry in sorted(load(folder).items()) if entry.get("host")]
