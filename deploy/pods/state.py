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
OWNER_KEYS = ("project", "run", "made_by")


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


def _entry(pod: Pod, previous: dict[str, Any] | None = None, **owner: str) -> dict[str, Any]:
    """The file's entry for ``pod``; who made it (``project``, ``run``, ``made_by``) is kept from before."""
    ssh = pod.ssh if pod.status == RUNNING else None
    kept = {k: v for k, v in (previous or {}).items() if k in OWNER_KEYS}
    kept.update({k: v for k, v in owner.items() if v})
    return {"name": pod.name, "host": ssh.host_spec() if ssh else None, "gpu": pod.gpu, "gpu_count": pod.gpu_count,
            "cost_per_hour": pod.cost_per_hr, "status": pod.status, **kept}


def record_pod(folder: str | os.PathLike[str], pod: Pod, project: str = "", run: str = "", made_by: str = "") -> None:
    """Remember ``pod`` (its SSH address when it is running with one) and, at create, who made it: the
    project id, the run (managed runs) and ``up`` or ``train``. Membership is that exact record."""
    pods = load(folder)
    pods[pod.id] = _entry(pod, pods.get(pod.id), project=project, run=run, made_by=made_by)
    _save(folder, pods)


def forget_pod(folder: str | os.PathLike[str], pod_id: str) -> None:
    pods = load(folder)
    if pods.pop(pod_id, None) is not None:
        _save(folder, pods)


def refresh(folder: str | os.PathLike[str], project: Iterable[Pod]) -> None:
    """Make the file agree with the API: the project's pods as they are now, gone pods dropped."""
    before = load(folder)
    current = {pod.id: _entry(pod, before.get(pod.id)) for pod in project}
    if current != before and (current or state_path(folder).exists()):
        _save(folder, current)


def recorded_ids(folder: str | os.PathLike[str], project: str) -> set[str]:
    """Ids of the pods this folder recorded at create for ``project`` (entries of older versions carry no
    project: this folder made them, so they count)."""
    return {pod_id for pod_id, entry in load(folder).items() if entry.get("project") in (None, project)}


def known_hosts(folder: str | os.PathLike[str] = ".", project: str | None = None, run: str | None = None) -> list[str]:
    """``user@ip:port`` of every running pod this project created, for when RUNPOD_HOST is unset.

    ``project``: only pods recorded for that project id; ``run``: only that run's pods and pods made by
    hand (``fab pods.up``), never another run's (a deploy must not ship its .env to them)."""
    found = []
    for _, entry in sorted(load(folder).items()):
        if not entry.get("host"):
            continue
        if project is not None and entry.get("project") not in (None, project):
            continue
        if run is not None and entry.get("run") not in (None, "", run):
            continue
        found.append(entry["host"])
    return found
