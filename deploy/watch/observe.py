"""The watcher's look at the run over SSH (the pods come from the API: :meth:`deploy.watch.act.Hands.run_pods`).

SSH is asked less often than the API and costs one round trip: the supervisor's status (the same
script ``fab status`` runs), the training's heartbeat file (its global step) and ``nvidia-smi``'s
utilisation, separated by marker lines.

Example::

    run = run_fact(spec, options, "/workspace/train")
    print(run.service, run.step, run.gpu_percent)   # running 120 None (no nvidia-smi)
"""

from __future__ import annotations

import json
import posixpath
import shlex

from deploy.hosts import HostOptions, HostSpec, connect
from deploy.runtimes.native.layout import SUPERVISOR, VENV
from deploy.runtimes.native.service import STATUS_SCRIPT, parse_service
from deploy.watch.facts import RunFact

HEARTBEAT_FILE = "lightning_logs/heartbeat.json"  # deploy.training.heartbeat writes it (operator code never imports torch)
SSH_TIMEOUT = 20.0
"""Seconds one SSH look may take (connect and command): a vanished machine must not stall the loop."""
_BEAT, _GPU = "@@gpu-deploy-heartbeat", "@@gpu-deploy-gpu"


def look_command(remote_dir: str) -> str:
    """One shell line: the supervisor's status JSON, the heartbeat file, then each GPU's utilisation."""
    status = shlex.join(["sh", "-c", STATUS_SCRIPT, "state", posixpath.join(remote_dir, VENV, "bin", "python"),
                         posixpath.join(remote_dir, SUPERVISOR), remote_dir])
    beat = shlex.quote(posixpath.join(remote_dir, HEARTBEAT_FILE))
    gpus = "nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits"
    return f"{status}; echo {_BEAT}; cat {beat} 2>/dev/null; echo; echo {_GPU}; {gpus} 2>/dev/null; true"


def parse_look(output: str) -> RunFact:
    """:func:`look_command`'s output as a :class:`RunFact`.

    >>> parse_look('{"alive": true, "status": "running"}\\n@@gpu-deploy-heartbeat\\n{"step": 12}\\n@@gpu-deploy-gpu\\n3\\n5\\n')
    RunFact(reachable=True, service='running', step=12, gpu_percent=4.0)
    """
    status, _, rest = output.partition(_BEAT)
    beat, _, gpus = rest.partition(_GPU)
    service = parse_service(status).status
    step = None
    try:
        data = json.loads(beat.strip() or "null")
        if isinstance(data, dict) and isinstance(data.get("step"), int):
            step = data["step"]
    except ValueError:
        pass
    busy = []
    for line in gpus.splitlines():
        try:
            busy.append(float(line.strip()))
        except ValueError:
            continue
    return RunFact(reachable=True, service=service, step=step, gpu_percent=sum(busy) / len(busy) if busy else None)


def run_fact(spec: HostSpec, options: HostOptions, remote_dir: str) -> RunFact:
    """The run on the pod in one SSH round trip; ``reachable=False`` when SSH fails in any way."""
    quick = HostOptions(key_file=options.key_file, known_hosts=options.known_hosts,
                        strict_host_keys=options.strict_host_keys,
                        connect_timeout=min(options.connect_timeout, SSH_TIMEOUT))
    try:
        with connect(spec, quick) as conn:
            result = conn.run(look_command(remote_dir), hide=True, warn=True, in_stream=False, timeout=SSH_TIMEOUT)
    except Exception:  # noqa: BLE001 - any failure to look (refused, timed out, reset) means unreachable
        return RunFact(reachable=False)
    if _BEAT not in result.stdout:
        return RunFact(reachable=False)
    return parse_look(result.stdout)
