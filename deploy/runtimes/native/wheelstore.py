"""The wheel store in the bucket, and moving a set between it and a host (rules: :mod:`.wheels`).

The host never holds the bucket's credentials. Storing: the host builds the wheels
(deploy/remote/wheelhouse.py ``build``) and reports their names, sizes and sha256; the operator reads
each back over SFTP, checks it, uploads it with its Storage, and writes the manifest last, so a
half-stored set is never used. Fetching: the operator hands the host presigned GET URLs in a 0600 job
file, and deploy/remote/fetch_dataset.py downloads and checks each, as it stages a dataset.

Example::

    wheels = BucketWheels(Storage.from_settings(settings))
    look = wheels.look(store_key(digest, base))
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.errors import HostError, StorageError
from deploy.hosts.remote import python_program, run, where, write_atomic
from deploy.runtimes.code.layout import META
from deploy.runtimes.native.wheels import MANIFEST_NAME, StoreLook, WheelFile, WheelSet, checked_wheel_name, parse_files
from deploy.storage import WHEELS, Storage
from deploy.storage.objects import get_json, put_json

if TYPE_CHECKING:
    from fabric import Connection

URL_LIFETIME = 3600
CHUNK = 1 << 20


class BucketWheels:
    """The ``wheels/`` folder of the run's bucket; ``storage`` is handed in (tests: the real one on a local S3)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def key(self, key: str, name: str = "") -> str:
        return self.storage.key(WHEELS, key, *([name] if name else []))

    def look(self, key: str) -> StoreLook:
        """The set stored under ``key``, or why there is none; read-only."""
        url = self.storage.url(self.key(key) + "/")
        found = get_json(self.storage, self.key(key, MANIFEST_NAME))
        if found is None:
            return StoreLook(key, url)
        try:
            return StoreLook(key, url, WheelSet(key, parse_files(found[0], f"The manifest of {url}")))
        except StorageError as exc:
            return StoreLook(key, url, problem=str(exc).rstrip("."))

    def fetch_job(self, wheels: WheelSet, dest: str) -> dict:
        """The plan fetch_dataset.py carries out, as it stages a dataset: each wheel's presigned GET URL, size and
        sha256; its marker says which set the folder holds."""
        return {"dest": dest, "delete": [], "marker": {"wheels": wheels.key}, "marker_name": ".gpu-deploy-wheels",
                "fetch": [{"path": checked_wheel_name(f.name), "size": f.size, "sha256": f.sha256,
                           "url": self.storage.presigned_get(self.key(wheels.key, f.name), URL_LIFETIME)}
                          for f in wheels.files]}

    def put(self, conn: Connection, key: str, files: tuple[WheelFile, ...], host_folder: str) -> WheelSet:
        """Read each wheel back from ``host_folder`` over SFTP, check it, upload it, then write the manifest."""
        sftp = conn.sftp()
        with tempfile.TemporaryDirectory(prefix="gpu-deploy-wheels-") as tmp:
            for f in files:
                target = self.key(key, checked_wheel_name(f.name))
                there = self.storage.head(target)
                if there is not None and there.size == f.size and there.sha256 == f.sha256:
                    continue  # stored by an earlier try
                local = Path(tmp, f.name)
                sftp.get(posixpath.join(host_folder, f.name), str(local))
                size, digest = _digest(local)
                if (size, digest) != (f.size, f.sha256):
                    raise HostError(f"The wheel {f.name} read back from {where(conn)} is not the one the host built "
                                    f"({size} of {f.size} bytes, or another sha256); deploy again.")
                self.storage.upload_file(local, target, sha256=digest)
                local.unlink()
        stored = WheelSet(key, files)
        put_json(self.storage, self.key(key, MANIFEST_NAME), stored.manifest())  # last: the set is whole now
        return stored


def _digest(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


# --------------------------------------------------------------------------- on the host


def fetch_on_host(conn: Connection, python: str, wheels: BucketWheels, stored: WheelSet, dest: str) -> str:
    """Fetch ``stored`` into ``dest`` on the host with the dataset stager (each wheel checked by size and sha256,
    written to ``.part`` then renamed); its one-line summary."""
    job = f"/tmp/gpu-deploy-wheels-{uuid.uuid4().hex}.json"  # presigned URLs: 0600, removed once read
    write_atomic(conn, job, json.dumps(wheels.fetch_job(stored, dest)).encode(), mode=0o600)
    try:
        result = run(conn, python_program(python, "fetch_dataset.py", job), "Fetching the wheels from the bucket")
    finally:
        run(conn, ["rm", "-f", job], "Removing the wheel job", warn=True)
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def build_on_host(conn: Connection, python: str, venv_python: str, site_dir: str, remote_dir: str,
                  dest: str) -> tuple[tuple[WheelFile, ...], list[str]]:
    """Build wheels of what pip installed into the virtualenv (its own ``site_dir``) into ``dest``; (wheels, skipped)."""
    log = posixpath.join(remote_dir, META, "pip-wheel.log")
    result = run(conn, python_program(python, "wheelhouse.py", "build", venv_python, site_dir, dest, log),
                 "Building the installed packages' wheels")
    data = _last_json(result.stdout, "wheelhouse.py build")
    files = parse_files(data.get("files"), f"The wheel list {where(conn)} reported")
    skipped = [str(s) for s in data.get("skipped") or []]
    return files, skipped


def store_from_host(conn: Connection, python: str, venv_python: str, site_dir: str, remote_dir: str,
                    wheels: BucketWheels, key: str, dest: str) -> tuple[WheelSet, list[str]]:
    """Build on the host, then put the set in the bucket (manifest last)."""
    files, skipped = build_on_host(conn, python, venv_python, site_dir, remote_dir, dest)
    return wheels.put(conn, key, files, dest), skipped


def _last_json(stdout: str, what: str) -> dict:
    try:
        data = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        data = None
    if not isinstance(data, dict):
        raise HostError(f"{what} printed no summary; see the host's .gpu-deploy logs.")
    return data

