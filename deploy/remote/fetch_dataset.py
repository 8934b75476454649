"""Stage a dataset on the host: fetch the planned files from presigned URLs, verify, rename, mark.

    python3 fetch_dataset.py PLAN.json

Standard library only; deploy (deploy.hosts.dataset) runs it with ``python3 -c`` and writes the plan
file with mode 0600 (its URLs grant read access for an hour), which this program removes once read.
The plan: ``{"dest", "fetch": [{"path", "url", "size", "sha256"}], "delete": [...], "marker",
"marker_name"}``. Each file downloads to ``<path>.part``, is checked for size and sha256, then
renamed; files the bucket no longer has are removed; the marker is written last, so an interrupted
stage is simply redone.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import sys
import urllib.request

WORKERS = 8
CHUNK = 1 << 20


def fetch(dest: str, item: dict) -> int:
    """Download one file into place; raise SystemExit naming it when it arrives corrupt."""
    final = os.path.join(dest, item["path"])
    os.makedirs(os.path.dirname(final), exist_ok=True)
    part = final + ".part"
    digest, size = hashlib.sha256(), 0
    with urllib.request.urlopen(item["url"], timeout=60) as resp, open(part, "wb") as out:
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
            os.unlink(os.path.join(dest, rel))
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
