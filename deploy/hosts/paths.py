"""One checked way from an untrusted name (a bucket key, a file name a host sent) to a path under a folder.

The rules are :func:`deploy.storage.safe_relative`'s (the one sync downloads use): no absolute
path, no ``..`` segment, backslashes count as separators, ``a//b``, ``./a`` and ``a/`` are
normalised. On top of it a name must be non-empty (it names a file, never the folder itself) and
hold no control character (NUL ends a C string; a newline splits a listing). The host-side dataset
program (deploy/remote/fetch_dataset.py, standard library only) carries a copy of these rules; a
unit test runs both on the same hostile names.

Example::

    under("/data/tiny", "wavs/a.wav", "The dataset file")  # "/data/tiny/wavs/a.wav"
    under("/data/tiny", "../../etc/passwd", "The dataset file")  # StorageError
"""

from __future__ import annotations

import posixpath
import re

from deploy.errors import StorageError
from deploy.storage import safe_relative

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def checked_relative(name: str, what: str = "The path") -> str:
    """``name`` in normal form (``a/b``), or a :class:`StorageError` saying ``what`` leaves its folder."""
    if _CONTROL.search(name):
        raise StorageError(f"{what} {name!r} holds a control character; it is not a usable file name.")
    try:
        relative = safe_relative(name)
    except StorageError:
        relative = "/"
    if relative.startswith("/"):  # safe_relative turns a leading backslash into "/" after its own check
        raise StorageError(f"{what} {name!r} leaves its folder (absolute or '..'); it is not staged or "
                           "copied.")
    if not relative:
        raise StorageError(f"{what} {name!r} names no file inside its folder.")
    return relative


def under(root: str, name: str, what: str = "The path") -> str:
    """``root/name`` (POSIX, as on a host) after :func:`checked_relative`."""
    return posixpath.join(root, checked_relative(name, what))
