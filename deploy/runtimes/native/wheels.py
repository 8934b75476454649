"""The wheel store's rules, pure: its key, what a manifest may hold, where packages come from.

A replacement pod is a fresh host: whatever its image lacks, pip would download again from the
package index at every deploy. The first deploy of a requirement set builds wheels of exactly what
pip installed into the run's virtualenv and stores them in the bucket under
``wheels/<key>/`` (:mod:`.wheelstore`); later deploys with the same key install those with
``pip install --no-index --find-links``. The key is the requirements digest (which already holds the
interpreter, its version and its torch) plus the host's platform and C library, so a set is only
used where its wheels install::

    wheels/py3.11-linux_x86_64-glibc_2.36-0f3c.../manifest.json    [{"name", "size", "sha256"}], written last
    wheels/py3.11-linux_x86_64-glibc_2.36-0f3c.../numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.whl

``PACKAGE_INDEX=never`` pins it: no package index after the first deploy, and a missing set is a
problem of the plan, before the host changes.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from deploy.errors import StorageError
from deploy.runtimes.code.layout import META
from deploy.runtimes.native.venv import BaseInterpreter

NEVER = "never"
"""``PACKAGE_INDEX=never``: a deploy that would need the package index fails in its plan instead."""
MANIFEST_NAME = "manifest.json"
MAX_WHEELS = 5000
_WHEEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.whl$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def checked_wheel_name(name: object) -> str:
    """``name`` when it is a plain ``*.whl`` file name (no folder, ``..`` or control character); else StorageError.

    >>> checked_wheel_name("tinypkg-1.0-py3-none-any.whl")
    'tinypkg-1.0-py3-none-any.whl'
    """
    if not isinstance(name, str) or len(name) > 255 or not _WHEEL.fullmatch(name) or ".." in name:
        raise StorageError(f"The wheel store names {name!r}, which is not a plain wheel file name; remove that "
                           "set from the bucket (fab s3.ls wheels/ lists them).")
    return name


def store_key(digest: str, base: BaseInterpreter) -> str:
    """The folder under ``wheels/`` for a requirement set on an interpreter and platform.

    >>> store_key("ab" * 32, BaseInterpreter("/usr/bin/python3", "3.11.9", platform="linux-x86_64",
    ...                                      libc="glibc 2.36"))
    'py3.11-linux_x86_64-glibc_2.36-abababababababababababababababab'
    """
    tag = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", part) or "unknown"
                   for part in (f"py{base.short_version}", base.platform, base.libc))
    return f"{tag}-{digest[:32]}"


def host_dir(remote_dir: str, key: str) -> str:
    """Where the host keeps a set's wheels: pip's ``--find-links`` folder."""
    return posixpath.join(remote_dir.rstrip("/"), META, "wheels", key)


@dataclass(frozen=True)
class WheelFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class WheelSet:
    """One stored set: its key and its wheels."""

    key: str
    files: tuple[WheelFile, ...]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def describe(self) -> str:
        return f"{len(self.files)} wheels, {self.bytes / 1e6:.1f} MB"

    def manifest(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files]


def parse_files(data: object, what: str) -> tuple[WheelFile, ...]:
    """``[{"name", "size", "sha256"}]`` from the bucket or the host, checked entry by entry; StorageError naming
    ``what`` when any entry is not a plain wheel name with a size and a sha256."""
    if not isinstance(data, list) or len(data) > MAX_WHEELS:
        raise StorageError(f"{what} is not a list of at most {MAX_WHEELS} wheels.")
    files: dict[str, WheelFile] = {}
    for entry in data:
        if not isinstance(entry, dict):
            raise StorageError(f"{what} holds {entry!r}, not a wheel entry.")
        name = checked_wheel_name(entry.get("name"))
        size, digest = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str) \
                or not _SHA256.match(digest):
            raise StorageError(f"{what} gives {name} no valid size and sha256.")
        if name in files:
            raise StorageError(f"{what} names {name} twice.")
        files[name] = WheelFile(name, size, digest)
    return tuple(files.values())


@dataclass(frozen=True)
class StoreLook:
    """What the bucket holds for one key (read while gathering): the set, or why there is none."""

    key: str
    url: str
    found: WheelSet | None = None
    problem: str = ""  # a manifest that is there but unusable


def package_source(look: StoreLook | None, index: str, problems: list[str]) -> str:
    """Where an install takes its packages from, as the plan says it; a pinned deploy without a set adds a problem."""
    if look is not None and look.found is not None:
        return f"from the bucket's wheel store ({look.found.describe()})"
    if index == NEVER:
        if look is None:
            problems.append("PACKAGE_INDEX=never, but this deploy has no bucket for the wheel store; set S3_BUCKET "
                            "and its keys, or unset PACKAGE_INDEX.")
        else:
            why = f" ({look.problem})" if look.problem else ""
            problems.append(f"PACKAGE_INDEX=never, but the bucket has no wheel store for these requirements on this "
                            f"host at {look.url}{why}; deploy once with PACKAGE_INDEX unset (that deploy stores "
                            "them), then pin it again.")
        return "from the bucket's wheel store (missing)"
    if look is None:
        return "from the package index"
    note = f" ({look.problem})" if look.problem else ""
    return f"from the package index; stores the wheels for later deploys{note}"


def stores_later(look: StoreLook | None, index: str) -> bool:
    """Whether a current virtualenv's wheels should still go to the bucket: the set is missing there (a virtualenv
    made before the store, an earlier store that failed, a set removed). Never when pinned: building the wheels
    again may ask the index."""
    return look is not None and look.found is None and index != NEVER
