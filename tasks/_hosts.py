"""Resolving the hosts a task works on, from fab's -H, a --hosts flag, or RUNPOD_HOST."""

from __future__ import annotations

from typing import Any

from deploy.errors import HostError
from deploy.hosts import HostOptions, HostSpec, Outcome, hosts_from
from deploy.pods.state import known_hosts
from deploy.settings import Settings

HOSTS_HELP = ("Hosts, comma-separated user@host:port (default: RUNPOD_HOST, else the pods fab pods.up made; "
              "fab -H works too).")


def targets(c: Any, settings: Settings, hosts: str | None) -> list[HostSpec]:
    """fab -H gives the task a Connection: that host wins; then --hosts; then RUNPOD_HOST; then the pods
    ``fab pods.up`` made for this project (``.gpu-deploy/pods.json``)."""
    if hosts is None and hasattr(c, "host") and hasattr(c, "port"):
        return [HostSpec(c.host, int(c.port), c.user)]
    if hosts is None and not settings.runpod_host:  # the pods `fab pods.up` created for this project
        hosts = ",".join(known_hosts()) or None
    return hosts_from(settings, hosts)


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
