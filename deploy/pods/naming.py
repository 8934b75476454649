"""Which pods are this project's: an exact project id in every pod name, never a name prefix.

A project is its bucket and prefix (the store every pod of the run writes to), so its id is a short
digest of the S3 endpoint, bucket and prefix: two projects never share one, whatever their names,
and the same project gets the same id on every machine. Pod names carry it, then what made the pod:

- ``gpu-deploy-3f2a9c1b-run-20261130-060215-a1b2-3``: the 3rd pod a managed run (``fab train``) asked
  for; the name is fixed before the create call, so a create that timed out is looked up by name
  instead of made twice;
- ``gpu-deploy-3f2a9c1b-up-5e0c7d21``: a pod ``fab pods.up`` made by hand.

:func:`parse_pod_name` reads a name back exactly: ``gpu-deploy-piper-v2-...`` or a name of another
project's id is not this project's, however alike the names look.

Example::

    project = project_id(settings)                  # '3f2a9c1b'
    pod_name(project, "20261130-060215-a1b2", 3)    # 'gpu-deploy-3f2a9c1b-run-20261130-060215-a1b2-3'
    parse_pod_name("gpu-deploy-3f2a9c1b-up-5e0c7d21").kind   # 'up'
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from deploy.settings import Settings

NAME_ROOT = "gpu-deploy"
MANAGED, MANUAL = "run", "up"
_NAME = re.compile(r"^gpu-deploy-(?P<project>[0-9a-f]{8})-(?:run-(?P<run>[A-Za-z0-9][A-Za-z0-9._-]*)-(?P<attempt>\d{1,6})"
                   r"|up-(?P<tag>[0-9a-f]{8}))$")


def project_id(settings: Settings) -> str:
    """Eight hex digits of sha256 over the S3 endpoint, bucket and prefix: the project, exactly."""
    where = "\n".join((settings.aws_endpoint_url or "aws", settings.s3_bucket or "", settings.s3_prefix or ""))
    return hashlib.sha256(where.encode()).hexdigest()[:8]


def pod_name(project: str, run_id: str, attempt: int) -> str:
    """The name of a managed run's ``attempt``-th pod (1 for the first)."""
    return f"{NAME_ROOT}-{project}-{MANAGED}-{run_id}-{attempt}"


def manual_pod_name(project: str) -> str:
    """A name for a pod ``fab pods.up`` makes."""
    return f"{NAME_ROOT}-{project}-{MANUAL}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class PodName:
    project: str
    kind: str
    """``run`` (a managed run's pod) or ``up`` (made by ``fab pods.up``)."""
    run_id: str = ""
    attempt: int = 0


def parse_pod_name(name: str) -> PodName | None:
    """What a pod name says, or None when it is not a name this kit gives.

    >>> parse_pod_name("gpu-deploy-3f2a9c1b-run-20261130-060215-a1b2-3")
    PodName(project='3f2a9c1b', kind='run', run_id='20261130-060215-a1b2', attempt=3)
    >>> parse_pod_name("gpu-deploy-piper-v2-ab12cd") is None
    True
    """
    match = _NAME.match(name or "")
    if not match:
        return None
    if match["run"]:
        return PodName(match["project"], MANAGED, match["run"], int(match["attempt"]))
    return PodName(match["project"], MANUAL)


def belongs(name: str, project: str, run_id: str | None = None) -> bool:
    """The pod name carries exactly this project id (and this run, when ``run_id`` is given)."""
    parsed = parse_pod_name(name)
    if parsed is None or parsed.project != project:
        return False
    return run_id is None or (parsed.kind == MANAGED and parsed.run_id == run_id)
