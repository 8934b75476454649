"""Which runtime runs on a host: asked for (``--runtime``/RUNTIME) or, with ``auto``, read from the probe."""

from __future__ import annotations

from deploy.errors import ConfigError
from deploy.hosts.probe import HostFacts
from deploy.hosts.ssh import HostOptions
from deploy.runtimes.base import ImageSource, Runtime
from deploy.runtimes.compose import ComposeRuntime
from deploy.runtimes.native import NativeRuntime
from deploy.runtimes.native.wheelstore import BucketWheels
from deploy.storage import Storage

KINDS: dict[str, type[Runtime]] = {"compose": ComposeRuntime, "native": NativeRuntime}
"""Every runtime's class by name: what each can do (``multi_node``, ``needs_image``) without building one."""
RUNTIMES = ("auto", *KINDS)


def choose_runtime(requested: str, facts: HostFacts) -> tuple[str, str]:
    """``compose`` or ``native`` for one host, and why; pure.

    ``auto`` keeps a native deploy native, picks compose on a host with a Docker engine and Compose,
    and native otherwise (RunPod pods)."""
    if requested not in RUNTIMES:
        raise ConfigError(f"The runtime {requested!r} is not one of {', '.join(RUNTIMES)}.")
    if requested != "auto":
        return requested, f"--runtime={requested}"
    if facts.native:
        return "native", "REMOTE_DIR holds a native deploy"
    if facts.docker and facts.compose_command:
        return "compose", f"the host has Docker {facts.docker} and {facts.compose_command}"
    if facts.docker:
        return "native", "the host has Docker but no Compose"
    return "native", "the host has no Docker engine"


def needs_image(requested: str) -> bool | None:
    """Whether the runtime asked for needs the training image; None for ``auto`` (each host's runtime decides)."""
    kind = KINDS.get(requested)
    return None if kind is None else kind.needs_image


def runtimes(images: ImageSource | None = None, options: HostOptions | None = None,
             source: str = ".", storage: Storage | None = None) -> dict[str, Runtime]:
    """Every runtime by name, with the collaborators a deploy hands them (none are needed to watch or stop):
    the bucket's images for compose, its wheel store for native."""
    wheels = BucketWheels(storage) if storage is not None else None
    return {"compose": ComposeRuntime(images, options, source), "native": NativeRuntime(options, source, wheels)}
