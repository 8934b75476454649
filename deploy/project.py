"""The training project: the folder whose code runs on the host and whose requirements training needs.

One notion for every runtime and for the image. ``TRAIN_PROJECT`` names it (default: the folder
``fab`` runs in, i.e. this kit vendored into the trainer's repository; or ``../my-trainer`` beside
it). Its code travels by the incremental sync (``.gitignore`` and ``.deployignore`` decide what);
its dependencies come from, in this order:

- ``requirements.txt`` in its root (pip's format, lines as written), else
- ``pyproject.toml``'s ``[project] dependencies`` (the package's own code is not installed: it is
  importable from the working directory, so a code change never touches the environment).

:meth:`TrainProject.deps_digest` names those dependencies (with the ``train`` extra and the base
image); the training image is tagged ``<IMAGE name>:deps-<12 hex>`` by it, so an image is rebuilt
only when a requirement changes.

Example::

    project = TrainProject.from_settings(settings)
    print(project.requirements_source, project.image_ref("piper-train:latest"))
    # requirements.txt piper-train:deps-3f2a9c1d0b7e
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path
from typing import Any

from deploy.errors import ConfigError

try:
    import tomllib  # Python 3.11+
except ImportError:  # pragma: no cover - Python 3.10: pyproject.toml projects need 3.11 on the laptop
    tomllib = None  # type: ignore[assignment]

REQUIREMENTS = "requirements.txt"
PYPROJECT = "pyproject.toml"
DEPS_TAG_PREFIX = "deps-"
DIGEST_LENGTH = 12
DEPS_LABEL = "gpu-deploy.deps"  # the image label that records which dependencies it holds
KIT_ROOT = Path(__file__).resolve().parents[1]  # this checkout: its pyproject.toml has the train extra


def train_requirements(repo: Path = KIT_ROOT) -> tuple[str, ...]:
    """gpu-deploy's ``train`` extra, from pyproject.toml (the one list the Dockerfile reads too)."""
    try:
        if tomllib is None:
            raise ImportError("tomllib")
        with open(repo / PYPROJECT, "rb") as handle:
            return tuple(tomllib.load(handle)["project"]["optional-dependencies"]["train"])
    except (ImportError, OSError, KeyError):
        try:
            reqs = requires("gpu-deploy") or []
        except PackageNotFoundError as exc:
            raise ConfigError("Cannot read the train extra: pyproject.toml is missing and gpu-deploy is not "
                              "installed; run from a checkout of the project.") from exc
        return tuple(r.split(";")[0].strip() for r in reqs if "extra == \"train\"" in r.replace("'", "\""))


@dataclass(frozen=True)
class TrainProject:
    """One training project: its root folder and the requirement lines its environment needs."""

    root: str
    requirements: str | None  # pip requirement lines (None: the project lists none)
    requirements_source: str = ""  # requirements.txt, pyproject.toml or ""

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> "TrainProject":
        """The project in ``root``; a folder that does not exist is named."""
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"TRAIN_PROJECT {root} is not a folder; set it to your trainer's checkout "
                              "(default: the folder fab runs in).")
        text, source = read_requirements(path)
        return cls(root=str(path), requirements=text, requirements_source=source)

    @classmethod
    def from_settings(cls, settings: Any) -> "TrainProject":
        return cls.at(getattr(settings, "train_project", ".") or ".")

    @property
    def name(self) -> str:
        return os.path.basename(self.root)

    def deps_digest(self, train: tuple[str, ...], base_image: str) -> str:
        """12 hex digits naming the dependencies: base image, the ``train`` extra, the project's requirements."""
        data = json.dumps({"base": base_image, "train": list(train), "project": self.requirements},
                          sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()[:DIGEST_LENGTH]

    def image_ref(self, image: str, train: tuple[str, ...], base_image: str) -> str:
        """``IMAGE``'s name tagged by the dependency digest: ``piper-train:deps-3f2a9c1d0b7e``."""
        return f"{image_name(image)}:{DEPS_TAG_PREFIX}{self.deps_digest(train, base_image)}"

    def describe(self) -> str:
        reqs = f"requirements from {self.requirements_source}" if self.requirements_source else "no requirements"
        return f"{self.root} ({reqs})"


def image_name(ref: str) -> str:
    """``ref`` without its tag (a registry port's colon is kept: ``host:5000/x:tag`` -> ``host:5000/x``)."""
    name, _, tag = ref.rpartition(":")
    return name if name and "/" not in tag else ref


def read_requirements(root: Path) -> tuple[str | None, str]:
    """The project's requirement lines and where they came from (see the module docstring)."""
    req = root / REQUIREMENTS
    if req.is_file():
        return req.read_text(), REQUIREMENTS
    pyproject = root / PYPROJECT
    if not pyproject.is_file():
        return None, ""
    if tomllib is None:  # pragma: no cover
        raise ConfigError(f"Reading {pyproject} needs Python 3.11 or later on this machine.")
    try:
        with open(pyproject, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{pyproject} cannot be read ({exc}); fix it or add a requirements.txt.") from exc
    deps = data.get("project", {}).get("dependencies")
    if deps is None:
        return None, ""
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise ConfigError(f"{pyproject}: [project] dependencies must be a list of requirement strings.")
    return "".join(f"{d}\n" for d in deps), PYPROJECT
