"""Stage a dataset on the host: fetch the planned files from presigned URLs, verify, rename, mark.

    python3 fetch_dataset.py PLAN.json

Standard library only; deploy (deploy.hosts.dataset) runs it with ``python3 -c`` and writes the plan
file with mode 0600 (its URLs grant read access for an hour), which this program removes once read.
The plan: ``{"dest", "fetch": [{"path", "url", "size", "sha256"}], "delete": [...], "marker",
"marker_name"}``. Each file downloads to ``<path>.part``, is checked for size and sha256, then
renamed; files the bucket no longer has are removed; the marker is written last, so an interrupted
stage is simply redone.

Every path in the plan is checked again here with a copy of the operator's rules
(deploy.hosts.paths.checked_relative: no absolute path, no ``..``, no control character, not
empty; ``a//b`` and backslashes normalised), and must resolve (links followed) inside the
destination: a plan or marker that names ``../x`` never writes or deletes outside it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import posixpath
import re
import sys
import urllib.request

WORKERS = 8
CHUNK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def checked_relative(name: str) -> str:
    """The copy of deploy.hosts.paths.checked_relative: ``name`` in normal form, or ValueError."""
    if not isinstance(name, str) or _CONTROL.search(name):
        raise ValueError("control character")
    slashed = name.replace("\\", "/")
    if slashed.startswith("/") or ".." in slashed.split("/"):
        raise ValueError("leaves its folder")
    normal = posixpath.normpath(slashed)
    if normal in (".", ""):
        raise ValueError("names no file")
    return normal


def inside(dest: str, name: str) -> str:
    """``dest/name`` when ``name`` is a safe path that stays in ``dest`` with links resolved; else SystemExit."""
    try:
        final = os.path.join(dest, checked_relative(name))
    except ValueError as exc:
        raise SystemExit("refused: %r %s" % (name, exc)) from None
    root = os.path.realpath(dest)
    parent = os.path.realpath(os.path.dirname(final))
    if parent != root and not parent.startswith(root.rstrip("/") + "/"):
        raise SystemExit("refused: %r resolves outside %s" % (name, dest))
    return os.path.join(parent, os.path.basename(final))


def fetch(dest: str, item: dict) -> int:
    """Download one file into place; raise SystemExit naming it when it arrives corrupt."""
    inside(dest, item["path"])  # refuse before creating any folder
    os.makedirs(os.path.join(dest, os.path.dirname(checked_relative(item["path"]))), exist_ok=True)
    final = inside(dest, item["path"])  # again: a link inside the new folders must not lead out
    part = final + ".part"
    for stale in (final, part):
        if os.path.islink(stale):
            os.unlink(stale)  # a link is replaced by the file, never written through
    digest, size = hashlib.sha256(), 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    with urllib.request.urlopen(item["url"], timeout=60) as resp, os.fdopen(os.open(part, flags, 0o644), "wb") as out:
        for chunk in iter(lambda: resp.read(CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    if size != item["size"] or (item.get("sha256") and digest.hexdigest() != item["sha256"]):
        os.unlink(part)
        raise SystemExit("corrupt: %s (%d of %d bytes)" % (item["path"], size, item["size"]))
    os.replace(part, final)
    return size


def stage(plan: dict) -> str:
    """Carry out ``plan``; return the one-line summary."""
    dest = plan["dest"]
    os.makedirs(dest, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        total = sum(pool.map(lambda item: fetch(dest, item), plan["fetch"]))
    for rel in plan["delete"]:
        try:
            os.unlink(inside(dest, rel))
        except FileNotFoundError:
            pass
    tmp = os.path.join(dest, plan["marker_name"] + ".tmp")
    with open(tmp, "w") as out:
        json.dump(plan["marker"], out)
    os.replace(tmp, os.path.join(dest, plan["marker_name"]))
    return "staged %d files, %d bytes" % (len(plan["fetch"]), total)


def main(argv: list[str]) -> int:
    with open(argv[0]) as handle:
        plan = json.load(handle)
    os.unlink(argv[0])
    print(stage(plan), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
