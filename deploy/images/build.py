"""`fab image-build`: the training image from BASE_IMAGE + the ``train`` extra + the training project's requirements.

The image holds dependencies only (the project's code reaches the host by the sync), so it is named
by what it depends on: ``<IMAGE name>:deps-<12 hex>`` (deploy.project.TrainProject.deps_digest),
labelled ``gpu-deploy.deps=<12 hex>``, and also tagged ``IMAGE`` so settings that name it keep working.
An image with that tag already in the local engine is not built again; a code-only change never
builds. The build context is made in memory: docker/Dockerfile, this kit's pyproject.toml (the train
extra) and README.md, the project's requirements as ``requirements-project.txt`` and an empty
``deploy/`` (the training code travels with the project's, not in the image). Every install is
constrained to the base image's torch (see docker/Dockerfile).

Example::

    plan = plan_build(docker_client(), TrainProject.from_settings(s), s.image, s.base_image)
    print("\\n".join(plan.describe()))
    result = build(docker_client(), plan)
"""

from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from deploy.errors import ImageError
from deploy.project import DEPS_LABEL, KIT_ROOT, TrainProject, image_name, train_requirements

DOCKERFILE = KIT_ROOT / "docker" / "Dockerfile"
CONTEXT_FILES = ("pyproject.toml", "README.md")
PROJECT_REQUIREMENTS = "requirements-project.txt"


@dataclass(frozen=True)
class BuildPlan:
    """What ``image-build`` would do: the tags, the digest, the base, and whether the engine has it already."""

    ref: str  # <IMAGE name>:deps-<digest>
    also: str  # IMAGE as the settings name it
    digest: str
    base_image: str
    project: TrainProject
    present: str = ""  # the local image id when the engine has ``ref`` already

    @property
    def noop(self) -> bool:
        return bool(self.present)

    def describe(self) -> list[str]:
        lines = [f"project   {self.project.describe()}",
                 f"base      {self.base_image} (its torch is kept)",
                 f"image     {self.ref}" + (f" (also tagged {self.also})" if self.also != self.ref else "")]
        if self.noop:
            lines.append(f"changes   none: the engine has {self.ref} ({self.present[:19]}); the dependencies are "
                         "unchanged")
        else:
            lines.append("change    build: the train extra" + (f" and {self.project.requirements_source}"
                                                                 if self.project.requirements else ""))
        return lines


@dataclass(frozen=True)
class BuildResult:
    """What a build made: the image id, its tags, how long it took."""

    ref: str
    image_id: str
    tags: tuple[str, ...]
    seconds: float
    built: bool

    def summary(self) -> str:
        if not self.built:
            return f"{self.ref} is up to date ({self.image_id[:19]})."
        return f"Built {', '.join(self.tags)} ({self.image_id[:19]}) in {self.seconds:.0f} s."


def deps_ref(project: TrainProject, image: str, base_image: str) -> str:
    """The tag an image with ``project``'s dependencies has: ``<image name>:deps-<digest>``."""
    return project.image_ref(image, train_requirements(), base_image)


def plan_build(client: Any, project: TrainProject, image: str, base_image: str, force: bool = False) -> BuildPlan:
    """Decide whether to build; read-only (one look at the local engine)."""
    train = train_requirements()
    ref = project.image_ref(image, train, base_image)
    present = "" if force else _local_id(client, ref)
    return BuildPlan(ref=ref, also=image, digest=project.deps_digest(train, base_image), base_image=base_image,
                     project=project, present=present)


def _local_id(client: Any, ref: str) -> str:
    import docker.errors

    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        return ""
    except docker.errors.APIError as exc:
        raise ImageError(f"The Docker engine cannot be asked for {ref} ({exc.explanation or exc}); check "
                         "`docker info`.") from exc


def build_context(project: TrainProject, dockerfile: Path = DOCKERFILE) -> bytes:
    """The build context as a tar in memory (see the module docstring); nothing else of either tree goes in."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same inputs, the same context
            tar.addfile(info, io.BytesIO(data))

        add("Dockerfile", dockerfile.read_bytes())
        for name in CONTEXT_FILES:
            add(name, (KIT_ROOT / name).read_bytes())
        if project.requirements is not None:
            add(PROJECT_REQUIREMENTS, project.requirements.encode())
        folder = tarfile.TarInfo("deploy")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
    return buffer.getvalue()


def build(client: Any, plan: BuildPlan, network_mode: str | None = None,
          log: Callable[[str], None] = lambda s: None) -> BuildResult:
    """Build the image (unless the plan says the engine has it) and tag it ``plan.ref`` and ``plan.also``.

    A failing step raises an :class:`ImageError` with the build's last lines (pip says which requirement).
    """
    began = time.monotonic()
    if plan.noop:
        _tag(client, plan.present, plan.also)
        return BuildResult(plan.ref, plan.present, (plan.ref, plan.also), 0.0, built=False)
    import docker.errors

    lines: list[str] = []
    try:
        stream = client.api.build(fileobj=io.BytesIO(build_context(plan.project)), custom_context=True, tag=plan.ref,
                                  buildargs={"BASE_IMAGE": plan.base_image, "DEPS_DIGEST": plan.digest}, rm=True,
                                  forcerm=True, network_mode=network_mode, decode=True)
        for chunk in stream:
            if "error" in chunk:
                tail = "\n".join(lines[-15:])
                raise ImageError(f"Building {plan.ref} on {plan.base_image} failed: {chunk['error'].strip()}\n{tail}")
            text = chunk.get("stream", "").rstrip()
            if text:
                lines.append(text)
                log(text)
    except docker.errors.APIError as exc:
        raise ImageError(f"The Docker engine refused to build {plan.ref} ({exc.explanation or exc}); check "
                         f"`docker info` and that BASE_IMAGE {plan.base_image} exists or can be pulled.") from exc
    image_id = _local_id(client, plan.ref)
    if not image_id:
        raise ImageError(f"The build of {plan.ref} ended without an image; its last lines:\n" + "\n".join(lines[-15:]))
    _tag(client, image_id, plan.also)
    return BuildResult(plan.ref, image_id, (plan.ref, plan.also), time.monotonic() - began, built=True)


def _tag(client: Any, image_id: str, ref: str) -> None:
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        name, tag = ref, "latest"
    client.images.get(image_id).tag(name, tag)


def image_deps(config_json: str) -> str | None:
    """The ``gpu-deploy.deps`` label of an image config (a manifest's ``config``), or None."""
    import json

    try:
        labels = (json.loads(config_json).get("config") or {}).get("Labels") or {}
    except (ValueError, AttributeError):
        return None
    return labels.get(DEPS_LABEL) or None


__all__ = ["BuildPlan", "BuildResult", "build", "build_context", "deps_ref", "image_deps", "image_name",
           "plan_build"]
