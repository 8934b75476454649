"""The native runtime's wheels on the host: build the ones pip installed (a stored set is fetched by
fetch_dataset.py, as a dataset is).

    python3 wheelhouse.py build PYTHON SITE DEST LOG

Standard library only; deploy (deploy.runtimes.native.wheels) runs it with ``python -c``.

``build`` lists what pip installed into the run's virtualenv: the distributions in its own
site-packages SITE (never what the interpreter already had: the image's torch is not there; and
every install into this virtualenv, not only the last, so a requirement added later still finds the
earlier ones), runs ``PYTHON -m pip wheel --no-deps`` of exactly those ``name==version`` into
DEST (pip's cache serves what it just downloaded), its output to LOG, and prints one JSON line
``{"files": [{"name", "size", "sha256"}], "skipped": [...]}``. A distribution pip took from a URL
or a local path (it has ``direct_url.json``) is skipped: the requirement list names it, not the
index; so is pip itself, which the virtualenv brings.

Every wheel name pip makes must be a plain ``*.whl`` file name (no folder, no ``..``, no control
character): the copy of deploy.runtimes.native.wheels.checked_wheel_name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

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


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"] and len(argv) == 5:
        print(json.dumps(build(*argv[1:5])), flush=True)
        return 0
    print("usage: wheelhouse.py build PYTHON SITE DEST LOG", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
