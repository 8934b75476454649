"""Resolving the hosts a task works on, from fab's -H, a --hosts flag, RUNPOD_HOST or the pods fab pods.up made."""

from __future__ import annotations

from typing import Any

from deploy.errors import HostError
from deploy.hosts import HostOptions, HostSpec, Outcome, hosts_from
from deploy.pods.naming import project_id
from deploy.pods.state import STATE_FILE, known_hosts
from deploy.reach import Gap
from deploy.settings import Settings

HOSTS_HELP = ("Hosts, comma-separated user@host:port (default: RUNPOD_HOST, else the pods fab pods.up made; "
              "fab -H works too).")
FAB_H = "fab's -H flag"
HOSTS_FLAG = "the --hosts flag"
POD_STATE = f"{STATE_FILE}, where fab pods.up recorded the pod (fab pods refreshes it)"


def _fab_host(c: Any) -> bool:
    return hasattr(c, "host") and hasattr(c, "port")


def _recorded(settings: Settings, run: str | None) -> list[str]:
    project = project_id(settings) if settings.s3_bucket else None
    return known_hosts(project=project, run=run)


def missing_hosts(c: Any, settings: Settings, hosts: str | None, run: str | None = None) -> list[str]:
    """``["RUNPOD_HOST"]`` when nothing names a host (no -H, --hosts, RUNPOD_HOST or recorded pod), else ``[]``:
    for :meth:`Settings.require`, so a task names every missing key at once."""
    named = hosts is not None or _fab_host(c) or bool(settings.runpod_host) or bool(_recorded(settings, run))
    return [] if named else ["RUNPOD_HOST"]


def targets(c: Any, settings: Settings, hosts: str | None, run: str | None = None,
            single: bool = False) -> list[HostSpec]:
    """fab -H gives the task a Connection: that host wins; then --hosts; then RUNPOD_HOST; then this project's
    running pods (``.gpu-deploy/pods.json``: recorded for this bucket and prefix exactly; with ``run``, only
    that run's pods and pods made by hand, so a deploy never ships its .env to another run's pod).
    ``single``: more than one such pod is an error naming them (a deploy of one node must pick one).
    Every host remembers where its address came from, for the sentence when it cannot be reached."""
    if hosts is None and _fab_host(c):
        return [HostSpec(c.host, int(c.port), c.user, origin=FAB_H)]
    if hosts is None and not settings.runpod_host:
        found = _recorded(settings, run)
        if single and len(found) > 1:
            raise HostError(f"{len(found)} pods of this project could take this deploy ({', '.join(found)}); name "
                            "one with --hosts or RUNPOD_HOST, or set NUM_NODES for one run across them.")
        if found:
            return hosts_from(settings, ",".join(found), origin=POD_STATE)
    return hosts_from(settings, hosts, origin=HOSTS_FLAG if hosts else "")


def on_reachable_hosts(specs: list[HostSpec], gaps: list[Gap], work: Any) -> list[Outcome]:
    """``work`` on every host that answered the reach check, in parallel; a host that did not is an outcome
    with its sentence, in the order the hosts were named (so the others' results still show)."""
    from deploy.hosts import for_each_host

    dead = {g.subject: g.error for g in gaps if g.kind == "host"}
    done = {o.spec: o for o in for_each_host([s for s in specs if s not in dead], work)}
    return [done.get(s) or Outcome(s, error=dead[s]) for s in specs]


def raise_if_failed(outcomes: list[Outcome]) -> None:
    """After every host's result was shown: fail naming each host that failed."""
    failed = [o for o in outcomes if o.error is not None]
    if len(failed) == 1 and len(outcomes) == 1:
        raise failed[0].error
    if failed:
        raise HostError(f"{len(failed)} of {len(outcomes)} hosts failed: "
                        + "; ".join(f"{o.spec}: {o.error}" for o in failed))


def options(settings: Settings) -> HostOptions:
    return HostOptions.from_settings(settings)
