"""The watcher's look at the run over SSH (the pods come from the API: :meth:`deploy.watch.act.Hands.run_pods`).

SSH is asked less often than the API, on one connection: the probe finds the runtime that runs
there (as ``fab status`` does: deploy.flow.status.service_on), and that runtime's
:meth:`~deploy.runtimes.base.Service.look` reads the service, the training's heartbeat file (its
global step) and ``nvidia-smi``'s utilisation in one round trip. Any runtime: a native pod's
supervisor and a compose host's container both answer in the supervisor's words.

Example::

    run = run_fact(spec, options, "/workspace/train")
    print(run.service, run.step, run.gpu_percent)   # running 120 None (no nvidia-smi)
"""

from __future__ import annotations

from deploy.flow.status import service_on
from deploy.hosts import HostOptions, HostSpec, connect
from deploy.hosts.text import printable
from deploy.runtimes.base import Look
from deploy.watch.facts import RunFact

SSH_TIMEOUT = 20.0
"""Seconds the connect, and each command of a look, may take: a vanished machine must not stall the loop."""


def fact_of(look: Look) -> RunFact:
    """A look at the run as the watcher's :class:`RunFact`: the training word, the heartbeat's step, the GPUs' use.

    >>> from deploy.runtimes.base import ServiceState
    >>> fact_of(Look(ServiceState(exists=True), "running", heartbeat='{"step": 12}', gpu_percent=4.0))
    RunFact(reachable=True, service='running', step=12, gpu_percent=4.0)
    """
    return RunFact(reachable=True, service=look.training, step=look.step, gpu_percent=look.gpu_percent)


def run_fact(spec: HostSpec, options: HostOptions, remote_dir: str) -> RunFact:
    """The run on the host; ``reachable=False`` when SSH fails in any way."""
    quick = HostOptions(key_file=options.key_file, known_hosts=options.known_hosts,
                        strict_host_keys=options.strict_host_keys,
                        connect_timeout=min(options.connect_timeout, SSH_TIMEOUT))
    try:
        with connect(spec, quick) as conn:
            conn.config.timeouts.command = SSH_TIMEOUT
            service, _ = service_on(conn, remote_dir)
            look = service.look(conn)
    except Exception as exc:  # noqa: BLE001 - any failure to look (refused, timed out, reset) means unreachable
        return RunFact(reachable=False, why=printable(str(exc) or type(exc).__name__)[:200])
    return fact_of(look)
