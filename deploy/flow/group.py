"""A multi-node run (NUM_NODES > 1): every host planned, the rendezvous checked, rank 0 started first.

A DDP group starts together: if any node must (re)start, every node stops and restarts from the
latest checkpoint in S3, since a group cannot take a node back midway. Before anything starts,
each other host must reach MASTER_ADDR:MASTER_PORT on rank 0 (deploy/remote/rendezvous.py).
A group is one writer of its run: it takes one attempt of the run's lease for every node
(``take-lease``, after the old nodes stopped), so every node claims the same attempt.
"""

from __future__ import annotations

import time
from typing import Any

from deploy.errors import ConfigError, HostError
from deploy.hosts.probe import probe
from deploy.hosts.remote import python_program, run
from deploy.hosts.ssh import HostOptions, HostSpec, Outcome, connect, for_each_host, require_sftp
from deploy.runtimes.base import START_STEPS, DeployResult, ImageSource, Log, Runtime, ServiceState, wait_for_training
from deploy.settings import Settings
from deploy.storage import Storage
from deploy.flow.choose import choose_runtime, runtimes
from deploy.flow.rollout import TAKE_LEASE, HostDeploy, Rollout, execute, prepare, take_lease, write_attempt

LISTEN_SECONDS = 20  # rank 0 listens this long for the others' connections
NATIVE_GROUP = ("Multi-node runs (NUM_NODES > 1) need the compose runtime; hosts without Docker (RunPod pods) "
                "train one run per host.")


def check_rendezvous(conns: list[Any], specs: list[HostSpec], addr: str, port: int) -> None:
    """Every other host must reach ``addr:port`` on rank 0 before anything starts.

    Rank 0 listens on the port (nothing listens there before training starts); the command returns
    once it is bound, and each other host connects to it.
    """
    listener = run(conns[0], python_program("python3", "rendezvous.py", "listen", str(port), str(LISTEN_SECONDS)),
                   "Listening on MASTER_PORT", warn=True)
    words = listener.stdout.split()
    if not listener.ok or words[:1] != ["listening"]:
        raise HostError(f"Rank 0 ({specs[0].host}) cannot listen on port {port}; is it in use? "
                        "Choose another MASTER_PORT.")
    try:
        for conn, spec in zip(conns[1:], specs[1:]):
            if not run(conn, python_program("python3", "rendezvous.py", "connect", addr, str(port)),
                       "Reaching MASTER_ADDR", warn=True).ok:
                raise HostError(f"{spec.host} cannot reach MASTER_ADDR {addr}:{port} on rank 0 ({specs[0].host}); "
                                "set MASTER_ADDR to an address of rank 0 the other hosts can reach (often its "
                                "private network address) and open MASTER_PORT between the hosts.")
    finally:
        run(conns[0], ["kill", words[2]], "Ending the rendezvous listener", warn=True)


def stop_group(conns: list[Any], deploys: list[HostDeploy]) -> None:
    """Stop every node still running: a DDP group restarts together, and rank 0 frees MASTER_PORT."""
    for conn, deploy in zip(conns, deploys):
        service = deploy.service()
        if service.state(conn).running:
            service.stop(conn)


def start_group(conns: list[Any], deploys: list[HostDeploy], wait: float, log: Log) -> list[ServiceState]:
    """Start a multi-node group (already stopped: see :func:`stop_group`): rank 0, then the others.

    On a failure every node is stopped again.
    """
    services = [d.service() for d in deploys]
    states: list[ServiceState] = []
    try:
        offsets = []
        for rank, (conn, deploy, service) in enumerate(zip(conns, deploys, services)):
            log(f"{deploy.spec.host}: start rank {rank}")
            offsets.append(service.start(conn, recreate=True))
        for conn, deploy, service, since in zip(conns, deploys, services, offsets):
            try:
                states.append(wait_for_training(conn, service, since, wait))
            except HostError as exc:
                raise HostError(f"{deploy.spec.host}:{deploy.spec.port} failed to start: {exc}") from exc
    except HostError:
        for conn, service in zip(conns, services):
            service.stop(conn, timeout=30)
        raise
    return states


def _plan_all(conns: list[Any], specs: list[HostSpec], rollout: Rollout, settings: Settings, storage: Storage,
              available: dict[str, Runtime]) -> list[Outcome]:
    def plan_one(spec: HostSpec) -> HostDeploy:
        rank = specs.index(spec)
        facts = probe(conns[rank], spec.workdir(rollout.remote_dir))
        name, reason = choose_runtime(rollout.runtime, facts)
        if not available[name].multi_node:
            raise HostError(f"{spec.host}:{spec.port}: {NATIVE_GROUP} ({reason})")
        return prepare(conns[rank], spec, rollout, settings, available[name], facts, reason, rank, storage)

    return for_each_host(specs, plan_one)


def deploy_group(specs: list[HostSpec], rollout: Rollout, settings: Settings, options: HostOptions, storage: Storage,
                 images: ImageSource, dry_run: bool = False, log: Log = print) -> list[Outcome]:
    """One run across ``specs`` (rank = position): plan all, check the rendezvous, start rank 0 first."""
    available = runtimes(images, options, settings.train_project, storage)
    if rollout.runtime in available and not available[rollout.runtime].multi_node:
        raise ConfigError(NATIVE_GROUP)
    for spec in specs:
        require_sftp(spec)
    if len(specs) != rollout.num_nodes:
        raise HostError(f"A {rollout.num_nodes}-node run needs {rollout.num_nodes} hosts; {len(specs)} were given "
                        "(RUNPOD_HOST or --hosts, comma-separated, rank 0 first).")
    conns = [connect(spec, options) for spec in specs]
    try:
        planned = _plan_all(conns, specs, rollout, settings, storage, available)
        for o in planned:
            if o.result is not None:
                log("\n".join(o.result.describe()))
        failed = [Outcome(o.spec, error=o.error or HostError(f"{o.spec.host}:{o.spec.port}: "
                                                             f"{o.result.plan.problems[0]}"))
                  for o in planned if o.error is not None or o.result.plan.problems]
        if failed:
            return failed + [Outcome(o.spec, error=HostError("not started: another host failed"))
                             for o in planned if o.spec not in {f.spec for f in failed}]
        deploys: list[HostDeploy] = [o.result for o in planned]
        if dry_run:
            return [Outcome(d.spec) for d in deploys]
        return _run_group(conns, specs, deploys, rollout, storage, log)
    finally:
        for conn in conns:
            conn.close()


def _run_group(conns: list[Any], specs: list[HostSpec], deploys: list[HostDeploy], rollout: Rollout,
               storage: Storage, log: Log) -> list[Outcome]:
    """Prepare every node (no start), then stop, check the rendezvous and start them as a group."""
    # A group restarts as one: a node's planned reload (new code only) restarts every node cold too.
    restart = rollout.restart or any(d.plan.needs(name) for d in deploys for name in START_STEPS)
    prepared = for_each_host(specs, lambda spec: execute(conns[specs.index(spec)], deploys[specs.index(spec)],
                                                         storage, wait=rollout.wait, log=log, start=False))
    if any(o.error for o in prepared) or not restart:
        return prepared
    began = time.monotonic()
    stop_group(conns, deploys)
    check_rendezvous(conns, specs, rollout.master_addr or specs[0].host, rollout.master_port)
    leased = group_lease(conns, deploys, rollout, storage, log)
    states = start_group(conns, deploys, rollout.wait, log)
    return [Outcome(o.spec, result=DeployResult(
                spec=o.spec, done=o.result.done + leased + ("start",), service=state,
                seconds=o.result.seconds + time.monotonic() - began, follow=f"fab logs --follow --hosts={o.spec}",
                runtime=o.result.runtime))
            for o, state in zip(prepared, states)]


def group_lease(conns: list[Any], deploys: list[HostDeploy], rollout: Rollout, storage: Storage,
                log: Log) -> tuple[str, ...]:
    """One attempt of the run for the whole group, written to every node; ``()`` when the deploy has no run."""
    if not rollout.run_id:
        return ()
    planned = next((d.lease for d in deploys if d.lease is not None), None)
    to = ",".join(str(d.spec) for d in deploys)
    lease = take_lease(storage, rollout.run_id, to, planned.attempt if planned else None, log)
    for conn, deploy in zip(conns, deploys):
        log(f"{deploy.spec.host}: {TAKE_LEASE}: attempt {lease.granted} of run {rollout.run_id} (every node)")
        write_attempt(conn, deploy.run.remote_dir, rollout.run_id, lease.granted)
    return (TAKE_LEASE,)
