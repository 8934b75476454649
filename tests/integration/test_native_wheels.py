"""The wheel store over a real sshd host, a real S3 server (moto) and a real package index on this machine.

The project's requirements.txt names a tiny package the host does not have, built here and served as
a PEP 503 index (``python -m http.server`` style, with an access log). Each "pod" is an sshd whose
sessions see that index through PIP_INDEX_URL and no pip config of this machine, with a pip cache of
its own. The deploy is the flow's (probe -> gather -> plan -> execute), without starting training:

first deploy installs from the index and stores the wheels -> a replacement pod (another sshd, fresh
REMOTE_DIR and pip cache) with PACKAGE_INDEX=never installs from the bucket, and the index hears
nothing -> a pinned requirement change stops in its plan before the host changes -> unpinned, it
installs (new key) and stores a new set -> a corrupt stored wheel falls back to the index, or, pinned,
fails naming the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.errors import HostError
from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.storage.objects import get_json
from tests.harness.waiting import wait_until
from tests.harness.wheels import Deployer, Index, start_pod

pytestmark = [pytest.mark.slow]


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    served = Index(tmp_path / "index")
    yield served
    served.stop()


def imports(remote_dir: str, module: str) -> str:
    python = Path(remote_dir, ".venv", "bin", "python")
    out = subprocess.run([str(python), "-c", f"import {module}; print({module}.VERSION)"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})  # only the deploy compiles
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def manifests(storage: Storage) -> dict[str, list[dict]]:
    found = {}
    for obj in storage.list(storage.key("wheels") + "/"):
        if obj.key.endswith("/manifest.json"):
            found[obj.key.split("/")[-2]] = get_json(storage, obj.key)[0]
    return found


def test_a_replacement_pod_installs_from_the_bucket_and_asks_no_index(tmp_path: Path, index: Index, s3_server,
                                                                      s3_bucket: str) -> None:
    tiny = index.add("gdtinypkg", "1.0", tmp_path)
    other = index.add("gdtinyother", "2.0", tmp_path)
    project = tmp_path / "project"
    (project / "mytrain").mkdir(parents=True)
    (project / "mytrain" / "__init__.py").write_text("VERSION = 1\n")
    (project / "requirements.txt").write_text("python-dotenv>=1.0\ngdtinypkg==1.0\n")
    bucket_env = s3_server.environ(s3_bucket, prefix=f"wheels-{uuid.uuid4().hex[:8]}")
    storage = Storage.from_settings(load_settings(environ=bucket_env, env_file=None))
    operator = Deployer(project, {**bucket_env, "NATIVE_PYTHON": sys.executable, "RUNTIME": "native"})
    root = f"/tmp/gpu-deploy-wheels-{uuid.uuid4().hex[:8]}"
    first_pod, replacement = start_pod(tmp_path / "pod1", index), start_pod(tmp_path / "pod2", index)
    try:
        # 1. the first deploy of this requirement set: from the index, and the wheels go to the bucket
        plan, logs, _ = operator.deploy(first_pod, f"{root}/one")
        assert any("from the package index; stores the wheels for later deploys" in line for line in plan), plan
        assert imports(f"{root}/one", "gdtinypkg") == "1.0"
        assert any(r.startswith("/simple/gdtinypkg/") for r in index.requests)
        [(key, manifest)] = manifests(storage).items()
        assert manifest == [{"name": tiny.name, "size": tiny.stat().st_size,
                             "sha256": hashlib.sha256(tiny.read_bytes()).hexdigest()}]  # python-dotenv: the host's
        assert any("stored 1 wheels" in line for line in logs), logs

        # 2. a replacement pod, pinned: the same set from the bucket, and the index hears nothing
        index.requests.clear()
        fresh = f"{root}/two"
        plan, logs, seconds = operator.deploy(replacement, fresh, PACKAGE_INDEX="never")
        assert seconds["install-requirements"] > 0 and "start" not in seconds
        assert any("from the bucket's wheel store (1 wheels, 0.0 MB)" in line for line in plan), plan
        assert imports(fresh, "gdtinypkg") == "1.0"
        assert index.requests == []
        pip_log = Path(fresh, ".gpu-deploy", "pip.log").read_text()
        assert "Looking in indexes" not in pip_log and f"Looking in links: {fresh}/.gpu-deploy/wheels/{key}" in pip_log
        assert Path(fresh, ".gpu-deploy", "wheels", key, tiny.name).read_bytes() == tiny.read_bytes()
        assert not list(Path("/tmp").glob("gpu-deploy-wheels-*.json"))  # the job with its URLs is gone
        assert any("installed from the bucket's wheel store" in line and "no package index" in line for line in logs)
        # pip installed without compiling; the deploy left that to a detached compileall, which gets there
        wait_until(lambda: list(Path(fresh, ".venv", "lib").glob("python3*/site-packages/gdtinypkg/__pycache__/*.pyc")),
                   60, "the installed package byte-compiled in the background")
        assert "compiling" not in pip_log.lower()

        # 3. pinned, a requirement change has no set yet: the plan stops before the host changes
        (project / "requirements.txt").write_text("python-dotenv>=1.0\ngdtinypkg==1.0\ngdtinyother==2.0\n")
        marker = Path(fresh, ".venv", "gpu-deploy.json").read_text()
        with pytest.raises(HostError, match="PACKAGE_INDEX=never, but the bucket has no wheel store"):
            operator.deploy(replacement, fresh, PACKAGE_INDEX="never")
        assert Path(fresh, ".venv", "gpu-deploy.json").read_text() == marker and index.requests == []

        # 4. unpinned, it installs (another key) and stores a second set
        plan, _, _ = operator.deploy(replacement, fresh)
        assert any("requirements.txt from the package index; stores the wheels" in line for line in plan), plan
        assert imports(fresh, "gdtinyother") == "2.0"
        sets = manifests(storage)
        assert len(sets) == 2 and key in sets
        [(new_key, new_set)] = [(k, v) for k, v in sets.items() if k != key]
        assert sorted(f["name"] for f in new_set) == sorted([tiny.name, other.name])
        again = "\n".join(operator.deploy(replacement, fresh, dry_run=True)[0])
        assert "install-requirements" not in again and "store-wheels" not in again  # nothing more to install or store

        # 5. a stored wheel that no longer matches its sha256: unpinned falls back to the index, pinned fails
        wheel_key = storage.key("wheels", new_key, other.name)
        storage.client.put_object(Bucket=storage.bucket, Key=wheel_key, Body=b"not the wheel")
        with pytest.raises(HostError, match=r"PACKAGE_INDEX=never, and the bucket's wheel store .* did not install"):
            operator.deploy(replacement, f"{root}/three", PACKAGE_INDEX="never")
        assert not list(Path(f"{root}/three/.gpu-deploy/wheels/{new_key}").glob("*.part"))
        index.requests.clear()
        _, logs, _ = operator.deploy(replacement, f"{root}/four")
        assert any("did not install" in line and "installing from the package index instead" in line for line in logs)
        assert imports(f"{root}/four", "gdtinyother") == "2.0" and index.requests
        assert storage.head(wheel_key).size == other.stat().st_size  # stored again, whole
    finally:
        first_pod.stop()
        replacement.stop()
        subprocess.run(["rm", "-rf", root])


def test_wheel_names_from_the_bucket_never_reach_the_host(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    """A manifest naming ../x.whl is unusable: the plan says so and falls back; no URL is made for it."""
    from deploy.runtimes.native.wheelstore import BucketWheels
    from deploy.storage.objects import put_json

    bucket_env = s3_server.environ(s3_bucket, prefix=f"wheels-{uuid.uuid4().hex[:8]}")
    storage = Storage.from_settings(load_settings(environ=bucket_env, env_file=None))
    store = BucketWheels(storage)
    put_json(storage, store.key("k1", "manifest.json"), [{"name": "../../x.whl", "size": 1, "sha256": "0" * 64}])
    look = store.look("k1")
    assert look.found is None and "not a plain wheel file name" in look.problem
    assert store.look("absent").found is None and store.look("absent").problem == ""
    assert shlex.quote(look.url).startswith("s3://")
    put_json(storage, store.key("k2", "manifest.json"), {"not": "a list"})
    assert "is not a list" in store.look("k2").problem
    assert json.dumps(store.look("k2").problem)  # one plain sentence
