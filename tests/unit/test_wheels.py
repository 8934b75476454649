"""The native runtime's wheel store, pure parts: its key, what a manifest may name, where the plan says packages
come from; and wheelhouse.py's checks, run here as a host runs it."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy.errors import StorageError
from deploy.hosts.remote import program_source
from deploy.runtimes.native.plan import NativeDesired, parse_gathered, plan_native
from deploy.runtimes.native.wheels import StoreLook, WheelFile, WheelSet, checked_wheel_name, parse_files, store_key
from deploy.runtimes.native.wheelstore import BucketWheels
from deploy.flow.choose import runtimes
from deploy.flow.rollout import Rollout
from deploy.settings import load_settings
from deploy.storage import Storage
from tests.unit.test_native import BASE, DESIRED, FACTS, SPEC, healthy

PINNED = NativeDesired(**{**DESIRED.__dict__, "package_index": "never"})
BASE_PIP = BASE.__class__(**{**BASE.__dict__, "pip": "24.0", "platform": "linux-x86_64", "libc": "glibc 2.35"})
KEY = store_key(DESIRED.requirements_digest(BASE_PIP), BASE_PIP)
URL = f"s3://bucket/wheels/{KEY}/"
ONE = WheelSet(KEY, (WheelFile("tinypkg-1.0-py3-none-any.whl", 2_500_000, "a" * 64),
                     WheelFile("numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.whl", 16_000_000, "b" * 64)))


def fresh(desired: NativeDesired = DESIRED, look: StoreLook | None = None, **changes):
    """A host whose virtualenv needs its requirements installed, with ``look`` at the bucket."""
    return healthy(desired, BASE_PIP, venv={"base": BASE_PIP.identity, "requirements": "older"}, wheels=look,
                   **changes)


def install_line(plan) -> str:
    return next(s.detail for s in plan.steps if s.name == "install-requirements")


# --------------------------------------------------------------------------- the plan says where packages come from


def test_plan_installs_from_the_store_when_it_has_the_set() -> None:
    plan = plan_native(SPEC, PINNED, fresh(PINNED, StoreLook(KEY, URL, ONE)), FACTS)
    assert plan.problems == ()
    assert "from the bucket's wheel store (2 wheels, 18.5 MB)" in install_line(plan)
    assert "package index" not in install_line(plan)


def test_plan_without_a_set_installs_from_the_index_and_stores() -> None:
    plan = plan_native(SPEC, DESIRED, fresh(look=StoreLook(KEY, URL)), FACTS)
    assert plan.problems == ()
    assert "from the package index; stores the wheels for later deploys" in install_line(plan)


def test_a_pinned_deploy_without_a_set_is_one_problem_before_any_change() -> None:
    plan = plan_native(SPEC, PINNED, fresh(PINNED, StoreLook(KEY, URL)), FACTS)
    [problem] = plan.problems
    assert problem.startswith("PACKAGE_INDEX=never, but the bucket has no wheel store for these requirements")
    assert URL in problem and "deploy once with PACKAGE_INDEX unset" in problem
    assert problem.count(". ") == 0 and problem.endswith(".")


def test_a_pinned_deploy_with_a_bad_manifest_names_it() -> None:
    look = StoreLook(KEY, URL, problem="The manifest names '../x.whl', which is not a plain wheel file name")
    plan = plan_native(SPEC, PINNED, fresh(PINNED, look), FACTS)
    assert "../x.whl" in plan.problems[0]
    unpinned = plan_native(SPEC, DESIRED, fresh(look=look), FACTS)
    assert unpinned.problems == () and "stores the wheels for later deploys" in install_line(unpinned)


def test_without_a_bucket_the_index_serves_and_nothing_is_stored() -> None:
    plan = plan_native(SPEC, DESIRED, fresh(look=None), FACTS)
    assert install_line(plan).startswith("pip install the train extra and requirements.txt from the package index (")
    assert "stores" not in install_line(plan)


def test_a_current_venv_whose_set_is_missing_stores_it_without_reinstalling() -> None:
    venv = {"base": BASE_PIP.identity, "requirements": DESIRED.requirements_digest(BASE_PIP)}
    plan = plan_native(SPEC, DESIRED, healthy(DESIRED, BASE_PIP, venv=venv, wheels=StoreLook(KEY, URL)), FACTS)
    assert [s.name for s in plan.steps] == ["store-wheels"]
    assert plan_native(SPEC, DESIRED, healthy(DESIRED, BASE_PIP, venv=venv, wheels=StoreLook(KEY, URL, ONE)),
                       FACTS).noop
    assert plan_native(SPEC, PINNED, healthy(PINNED, BASE_PIP, venv=venv, wheels=StoreLook(KEY, URL)),
                       FACTS).noop  # pinned: building wheels may ask the index, so it does not


def test_a_requirement_change_is_another_key() -> None:
    changed = NativeDesired(**{**DESIRED.__dict__, "user_requirements": "numpy\ntinypkg\n"})
    assert store_key(changed.requirements_digest(BASE_PIP), BASE_PIP) != KEY


# --------------------------------------------------------------------------- key, names, manifests


def test_key_names_python_platform_and_libc_and_is_one_safe_segment() -> None:
    assert KEY.startswith("py3.11-linux_x86_64-glibc_2.35-") and "/" not in KEY
    musl = BASE_PIP.__class__(**{**BASE_PIP.__dict__, "libc": ""})
    assert store_key("c" * 64, musl) == "py3.11-linux_x86_64-unknown-" + "c" * 32


def test_the_host_reports_platform_libc_and_pip() -> None:
    line = json.dumps({"base": {"executable": "/usr/bin/python3", "version": "3.11.9", "pip": "24.0",
                                "platform": "linux-x86_64", "libc": "glibc 2.35"}})
    base = parse_gathered(line).base
    assert base is not None and (base.pip, base.platform, base.libc) == ("24.0", "linux-x86_64", "glibc 2.35")
    assert base.identity == "/usr/bin/python3 3.11.9 torch none"  # unchanged: a venv made before is still current


@pytest.mark.parametrize("name", ["../evil.whl", "a/b.whl", "x.whl\n", "tiny\x00.whl", "tinypkg.tar.gz", "",
                                  ".hidden.whl", "a..b-1.whl", None, 7, "x" * 300 + ".whl"])
def test_a_name_that_is_not_a_plain_wheel_file_is_refused(name) -> None:
    with pytest.raises(StorageError, match="not a plain wheel file name"):
        checked_wheel_name(name)


def test_manifest_entries_need_a_size_and_a_sha256_and_no_twins() -> None:
    good = [{"name": "tinypkg-1.0-py3-none-any.whl", "size": 10, "sha256": "0" * 64}]
    assert parse_files(good, "m")[0].size == 10
    for bad in ([{"name": "tinypkg-1.0-py3-none-any.whl", "size": "10", "sha256": "0" * 64}],
                [{"name": "tinypkg-1.0-py3-none-any.whl", "size": 10, "sha256": "XYZ"}],
                good + good, {"files": good}, ["tinypkg-1.0-py3-none-any.whl"]):
        with pytest.raises(StorageError):
            parse_files(bad, "m")


def test_the_flow_hands_the_native_runtime_the_buckets_store_and_the_pin() -> None:
    settings = load_settings(overrides={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                                        "S3_BUCKET": "wheel-bucket", "S3_PREFIX": "team", "PACKAGE_INDEX": "never"},
                             environ={})
    native = runtimes(storage=Storage.from_settings(settings))["native"]
    assert native.wheels is not None and native.wheels.key(KEY, "manifest.json") == f"team/wheels/{KEY}/manifest.json"
    assert runtimes()["native"].wheels is None  # watching or stopping needs no store
    rollout = Rollout.from_settings(settings, SimpleNamespace(image_id="", image_bytes=0, dataset=None,
                                                              image_problem=None), run_id="")
    assert rollout.package_index == "never"


# --------------------------------------------------------------------------- the host programs


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "served"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def wheelhouse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", program_source("wheelhouse.py"), *args], capture_output=True,
                          text=True, timeout=60)


class Presigned:
    """A stand-in for the bucket's presigned URLs: each wheel at the test's HTTP server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def key(self, *parts: str) -> str:
        return "/".join(parts)

    def presigned_get(self, key: str, expires: int) -> str:
        return f"{self.base_url}/{key.rsplit('/', 1)[-1]}"


def fetch(tmp_path: Path, base_url: str, dest: Path, files: tuple[WheelFile, ...]) -> subprocess.CompletedProcess[str]:
    """What fetch_on_host runs on the host: the dataset stager with the store's plan, from a 0600 job file."""
    plan = BucketWheels(Presigned(base_url)).fetch_job(WheelSet(KEY, files), str(dest))  # type: ignore[arg-type]
    job = tmp_path / "job.json"
    job.write_text(json.dumps(plan))
    job.chmod(0o600)
    return subprocess.run([sys.executable, "-c", program_source("fetch_dataset.py"), str(job)], capture_output=True,
                          text=True, timeout=60)


def test_fetch_verifies_each_wheel_and_marks_the_folder_with_its_set(tmp_path: Path, served) -> None:
    root, base_url = served
    data = b"wheel bytes" * 100
    (root / "tinypkg-1.0-py3-none-any.whl").write_bytes(data)
    wheel = WheelFile("tinypkg-1.0-py3-none-any.whl", len(data), hashlib.sha256(data).hexdigest())
    dest = tmp_path / "wheels"
    first = fetch(tmp_path, base_url, dest, (wheel,))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"staged 1 files, {len(data)} bytes" and not (tmp_path / "job.json").exists()
    assert (dest / wheel.name).read_bytes() == data
    assert json.loads((dest / ".gpu-deploy-wheels").read_text()) == {"wheels": KEY}


def test_fetch_refuses_a_corrupt_or_missing_wheel_and_leaves_no_part(tmp_path: Path, served) -> None:
    root, base_url = served
    (root / "tinypkg-1.0-py3-none-any.whl").write_bytes(b"tampered")
    dest = tmp_path / "wheels"
    bad = WheelFile("tinypkg-1.0-py3-none-any.whl", 8, "0" * 64)
    result = fetch(tmp_path, base_url, dest, (bad,))
    assert result.returncode != 0 and "corrupt: tinypkg-1.0-py3-none-any.whl" in result.stderr
    result = fetch(tmp_path, base_url, dest, (WheelFile("other-1.0-py3-none-any.whl", 8, "0" * 64),))
    assert result.returncode != 0 and "404" in result.stderr
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("name", ["../escape.whl", "sub/x.whl", "x.whl\r", "x.whl\n", "/etc/x.whl"])
def test_a_fetch_plan_names_only_plain_wheels(tmp_path: Path, name: str) -> None:
    with pytest.raises(StorageError, match="not a plain wheel file name"):
        BucketWheels(Presigned("http://127.0.0.1:9")).fetch_job(  # type: ignore[arg-type]
            WheelSet(KEY, (WheelFile(name, 1, "0" * 64),)), str(tmp_path / "wheels"))


def test_build_takes_the_venvs_own_packages_and_skips_direct_ones_and_pip(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    for name, direct in (("local_thing", True), ("pip", False)):
        info = site / f"{name}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        if direct:
            (info / "direct_url.json").write_text('{"url": "file:///src/local_thing", "dir_info": {}}')
    result = wheelhouse("build", sys.executable, str(site), str(tmp_path / "wheels"), str(tmp_path / "log"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"files": [], "skipped": ["local_thing"]}
