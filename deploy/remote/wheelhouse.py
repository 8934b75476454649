"""The native runtime's wheels on the host: build the ones pip installed, or fetch a stored set.

    python3 wheelhouse.py build PYTHON SITE DEST LOG
    python3 wheelhouse.py fetch JOB.json

Standard library only; deploy (deploy.runtimes.native.wheels) runs it with ``python -c``.

``build`` lists what pip installed into the run's virtualenv: the distributions in its own
site-packages SITE (never what the interpreter already had: the image's torch is not there; and
every install into this virtualenv, not only the last, so a requirement added later still finds the
earlier ones), runs ``PYTHON -m pip wheel --no-deps`` of exactly those ``name==version`` into
DEST (pip's cache serves what it just downloaded), its output to LOG, and prints one JSON line
``{"files": [{"name", "size", "sha256"}], "skipped": [...]}``. A distribution pip took from a URL
or a local path (it has ``direct_url.json``) is skipped: the requirement list names it, not the
index; so is pip itself, which the virtualenv brings.

``fetch`` reads the job file deploy wrote with mode 0600 (its presigned URLs grant read access for
an hour) and removes it once read: ``{"dest", "files": [{"name", "url", "size", "sha256"}]}``.
Each wheel downloads to ``<name>.part``, is checked for size and sha256, then renamed; a wheel
already in DEST with that size and sha256 stays. It prints ``{"fetched", "kept", "bytes"}``.

Every wheel name, in a job or made by pip, must be a plain ``*.whl`` file name (no folder, no
``..``, no control character): the copy of deploy.runtimes.native.wheels.checked_wheel_name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.request

CHUNK = 1 << 20
_WHEEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.whl$")


def checked_wheel_name(name: object) -> str:
    """``name`` when it is a plain ``*.whl`` file name; SystemExit naming it otherwise."""
    if not isinstance(name, str) or len(name) > 255 or not _WHEEL.fullmatch(name) or ".." in name:
        raise SystemExit("refused: %r is not a plain wheel file name" % (name,))
    return name


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def file_digest(path: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def installed(site_dir: str) -> tuple[dict[str, str], list[str]]:
    """The virtualenv's own distributions: {canonical name: name==version} to build, and those skipped."""
    from importlib.metadata import distributions

    build, skipped = {}, []
    for dist in distributions(path=[site_dir]):
        name, version = dist.metadata["Name"], dist.version
        if not name or not version or canonical(name) == "pip":
            continue
        if dist.read_text("direct_url.json") is not None:
            skipped.append(name)
        else:
            build[canonical(name)] = "%s==%s" % (name, version)
    return build, sorted(skipped)


def build(python: str, site_dir: str, dest: str, log: str) -> dict:
    build_reqs, skipped = installed(site_dir)
    os.makedirs(dest, exist_ok=True)
    if build_reqs:
        with open(log, "ab") as out:
            code = subprocess.call([python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                                    "--wheel-dir", dest, *sorted(build_reqs.values())], stdout=out, stderr=out)
        if code:
            raise SystemExit("pip wheel failed (exit %d); see %s" % (code, log))
    files, found = [], set()
    for name in sorted(os.listdir(dest)):
        if not name.endswith(".whl"):
            continue
        dist = canonical(name.split("-", 1)[0])
        if dist not in build_reqs or dist in found:
            continue  # a wheel of an earlier set: not what pip installed now
        checked_wheel_name(name)
        size, digest = file_digest(os.path.join(dest, name))
        files.append({"name": name, "size": size, "sha256": digest})
        found.add(dist)
    missing = sorted(build_reqs[d] for d in set(build_reqs) - found)
    if missing:
        raise SystemExit("pip wheel made no wheel for %s" % ", ".join(missing))
    return {"files": files, "skipped": skipped}


def fetch_one(dest: str, item: dict) -> tuple[int, bool]:
    """Download one wheel into place unless it is there already; (bytes, fetched). SystemExit when corrupt."""
    name = checked_wheel_name(item.get("name"))
    final = os.path.join(dest, name)
    if os.path.isfile(final) and not os.path.islink(final) and file_digest(final) == (item["size"], item["sha256"]):
        return 0, False
    part = final + ".part"
    for stale in (final, part):
        if os.path.islink(stale):
            os.unlink(stale)  # a link is replaced by the file, never written through
    digest, size = hashlib.sha256(), 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        with urllib.request.urlopen(item["url"], timeout=60) as resp, \
                os.fdopen(os.open(part, flags, 0o644), "wb") as out:
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:  # urllib's HTTPError and URLError are OSErrors
        if os.path.exists(part):
            os.unlink(part)
        raise SystemExit("missing: %s (%s)" % (name, getattr(exc, "code", None) or exc)) from None
    if size != item["size"] or digest.hexdigest() != item["sha256"]:
        os.unlink(part)
        raise SystemExit("corrupt: %s (%d of %d bytes, or another sha256)" % (name, size, item["size"]))
    os.replace(part, final)
    return size, True


def fetch(job: dict) -> dict:
    dest = job["dest"]
    os.makedirs(dest, exist_ok=True)
    for item in job["files"]:
        checked_wheel_name(item.get("name"))  # refuse the whole job before fetching any of it
    results = [fetch_one(dest, item) for item in job["files"]]
    return {"fetched": sum(1 for _, new in results if new), "kept": sum(1 for _, new in results if not new),
            "bytes": sum(n for n, _ in results)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"] and len(argv) == 5:
        print(json.dumps(build(*argv[1:5])), flush=True)
        return 0
    if argv[:1] == ["fetch"] and len(argv) == 2:
        with open(argv[1]) as handle:
            job = json.load(handle)
        os.unlink(argv[1])
        print(json.dumps(fetch(job)), flush=True)
        return 0
    print("usage: wheelhouse.py build PYTHON SITE DEST LOG | fetch JOB", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
