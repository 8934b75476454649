"""Before a task's real work: every endpoint it needs answers, or one sentence says which does not and why.

Local checks come first (the SSH key file), then the bucket, the hosts and RunPod's API are asked at
once, each within CONNECT_TIMEOUT_SECONDS (:mod:`deploy.reach`). A dry run that cannot reach something
prints the plan it can, then :func:`unchecked` says what it could not check and ends it with exit 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from deploy.hosts.ssh import HostOptions, HostSpec, check_key_file, reach_host
from deploy.reach import Gap, NotChecked, preflight, raise_gaps
from deploy.settings import Settings


def reach(settings: Settings, *, storage: Any = None, signed: bool = True, hosts: Sequence[HostSpec] = (),
          api: Any = None, collect: bool = False) -> list[Gap]:
    """Ask each endpoint once, all at once. A gap is the task's error, unless ``collect`` (a dry run: the plan
    marks what it could not check, and :func:`unchecked` ends it; a part a task can do without) returns them.

    ``storage``: its endpoint, and with ``signed`` one listing (bucket, keys, an S3 answer); ``hosts``: an
    SSH greeting from each; ``api``: one question to RunPod's API with the key.
    """
    timeout = float(settings.connect_timeout_seconds)
    options = HostOptions.from_settings(settings)
    if hosts and options.key_file:
        check_key_file(options.key_file, options.key_origin)  # a local check: before any connection
    checks: list[tuple[Any, ...]] = []
    if storage is not None:
        checks.append((f"the bucket {storage.url()}", partial(storage.reach, timeout, signed), "bucket"))
    checks += [(f"the host {spec}", partial(reach_host, spec, options, timeout), "host", spec) for spec in hosts]
    if api is not None:
        checks.append(("RunPod's API", partial(api.reach, timeout), "api"))
    gaps = preflight(checks)
    if gaps and not collect:
        raise_gaps(gaps)
    return gaps


def unchecked(gaps: Sequence[Gap]) -> None:
    """End a dry run whose plan is incomplete: one line per thing it could not check, then exit 1."""
    for gap in gaps:
        print(f"not checked: {gap.what} (the error below says why)")
    if gaps:
        raise NotChecked(f"Dry run incomplete: {', '.join(g.what for g in gaps)} could not be checked "
                         f"({str(gaps[0].error).rstrip('.')}).")
