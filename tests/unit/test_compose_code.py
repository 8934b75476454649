"""The compose runtime ships the training project's code as the native runtime does, and runs it the same way.

Pure plans (what a code-only change does on a compose host) and the two runtimes' effective working
directory and environment, read from what each actually runs: the compose service file and the
native supervisor's run.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from deploy.hosts import HostSpec
from deploy.hosts.envfile import EnvShipment
from deploy.hosts.probe import HostFacts
from deploy.runtimes.base import HostRun, ServiceState
from deploy.runtimes.code.tree import LocalFile
from deploy.runtimes.compose import (SERVICE_FILE, TRAINING_ENV, WORKDIR, ComposeRuntime, DesiredRun, HostState,
                                     compose_files, compose_source, file_digest, plan_deploy)
from deploy.runtimes.native import NativeRuntime
from deploy.settings import Secret

SPEC = HostSpec("203.0.113.10", 40022)
ENV = EnvShipment(keys=("S3_BUCKET",), _content=Secret("S3_BUCKET=b\n"))
FILES = {"trainer/model.py": LocalFile("/src", "trainer/model.py", 100, 1000),
         "requirements.txt": LocalFile("/src", "requirements.txt", 20, 1000)}
DESIRED = DesiredRun(image_ref="train:deps-1", image_id="sha256:" + "a" * 64, remote_dir="/workspace/train", env=ENV,
                     files=FILES, source="/src", local_rsync=True)
FACTS = HostFacts(is_root=True, docker="26.1", compose_v2="2.27", python3="3.11", remote_dir_exists=True,
                  tools=frozenset({"zstd", "curl", "rsync"}), disk_free_kb=10**9)


def current(desired: DesiredRun = DESIRED, **changes) -> HostState:
    """A host running ``desired`` exactly: image, .env, compose files, code and its release."""
    state = HostState(facts=FACTS, host_image_id=desired.image_id, env_digest=ENV.digest,
                      file_digests={n: file_digest(b) for n, b in compose_files(False).items()},
                      service=ServiceState(exists=True, running=True, status="running", image_id=desired.image_id),
                      code={rel: (f.size, f.mtime) for rel, f in desired.files.items()},
                      manifest=frozenset(desired.files), release=desired.code_digest())
    return dataclasses.replace(state, **changes)


def test_a_host_running_this_code_needs_nothing() -> None:
    plan = plan_deploy(SPEC, DESIRED, current())
    assert plan.noop, plan.describe()
    assert any("mounted at /workspace" in line for line in plan.describe())


def test_a_code_only_change_sends_that_file_and_reloads_warm_without_any_image_step() -> None:
    changed = {**FILES, "trainer/model.py": LocalFile("/src", "trainer/model.py", 101, 2000)}
    desired = dataclasses.replace(DESIRED, files=changed)
    plan = plan_deploy(SPEC, desired, current())
    assert [s.name for s in plan.steps] == ["sync-code", "reload"]
    assert plan.sync.send == ("trainer/model.py",) and plan.sync.delete == () and plan.sync.method == "sftp"
    assert "1 files" in plan.steps[0].detail and "takes the new code warm" in plan.steps[1].detail


def test_a_code_change_with_new_settings_or_the_restart_flag_recreates_the_service() -> None:
    changed = {**FILES, "trainer/model.py": LocalFile("/src", "trainer/model.py", 101, 2000)}
    desired = dataclasses.replace(DESIRED, files=changed)
    assert [s.name for s in plan_deploy(SPEC, desired, current(env_digest="older")).steps] == [
        "write-env", "sync-code", "start"]
    forced = dataclasses.replace(desired, restart=True)
    assert [s.name for s in plan_deploy(SPEC, forced, current()).steps] == ["sync-code", "restart"]


def test_both_runtimes_plan_the_code_sync_as_one_part_with_one_line(tmp_path: Path) -> None:
    from deploy.runtimes.native.plan import NativeState, plan_native
    from deploy.runtimes.native.venv import BaseInterpreter

    changed = {**FILES, "trainer/model.py": LocalFile("/src", "trainer/model.py", 2_500_000, 2000)}
    compose = plan_deploy(SPEC, dataclasses.replace(DESIRED, files=changed), current())
    run = HostRun(spec=SPEC, remote_dir="/workspace/train", env=ENV)
    native = dataclasses.replace(NativeRuntime(source=tmp_path).desire(run), files=changed, local_rsync=True)
    shipped = {rel: (f.size, f.mtime) for rel, f in FILES.items()}
    state = NativeState(base=BaseInterpreter("/usr/bin/python3", "3.11.9"), files=shipped, manifest=frozenset(FILES))
    assert plan_native(SPEC, native, state, FACTS).sync == compose.sync
    assert compose.steps[0].detail == "1 files (2.5 MB) to send by rsync, 0 to remove, 1 unchanged"


def test_a_deleted_file_is_removed_and_only_shipped_files_are() -> None:
    state = current(manifest=frozenset({*FILES, "trainer/old.py"}))
    plan = plan_deploy(SPEC, DESIRED, state)
    assert plan.sync.delete == ("trainer/old.py",) and plan.sync.send == ()


def test_code_synced_but_never_started_is_started_on_the_next_deploy() -> None:
    plan = plan_deploy(SPEC, DESIRED, current(release="an earlier release"))
    assert [s.name for s in plan.steps] == ["reload"]  # the running entrypoint takes the synced code


def test_a_host_deployed_by_the_previous_version_gets_the_code_and_the_new_compose_file() -> None:
    # No manifest, no release, the old service file (lightning_logs mounted alone).
    old = current(code={}, manifest=frozenset(), release=None, file_digests={SERVICE_FILE: "old"})
    assert [s.name for s in plan_deploy(SPEC, DESIRED, old).steps] == ["sync-code", "upload-compose", "start"]


def test_a_host_without_python3_gets_every_file() -> None:
    plan = plan_deploy(SPEC, DESIRED, current(code={}, manifest=frozenset()))
    assert set(plan.sync.send) == set(FILES)


def test_the_compose_runtime_ships_the_training_project_and_gpu_deploys_training_code(tmp_path: Path) -> None:
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / ".gitignore").write_text("data/\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"x")
    run = HostRun(spec=SPEC, remote_dir="/workspace/train", env=ENV, image_ref="t:1", image_id="sha256:1")
    desired = ComposeRuntime(source=tmp_path).desire(run)
    assert "trainer/__init__.py" in desired.files and "data/big.bin" not in desired.files
    assert ".gpu-deploy/app/deploy/training/entrypoint.py" in desired.files
    native = NativeRuntime(source=tmp_path).desire(run)
    assert set(native.files) == set(desired.files)  # one sync, one file list, either runtime


def _relative(path: str, root: str) -> str:
    return "." if path == root else path[len(root) + 1:] if path.startswith(root + "/") else path


def test_both_runtimes_give_the_training_command_the_same_working_directory_and_environment(tmp_path: Path) -> None:
    service = yaml.safe_load(compose_source(SERVICE_FILE).read_text())["services"]["train"]
    compose_env = {k: str(v) for k, v in service["environment"].items()}
    assert compose_env == TRAINING_ENV
    assert service["working_dir"] == WORKDIR
    # REMOTE_DIR is the working directory, so lightning_logs/ is below it; DATA_DIR (default REMOTE_DIR/data) at data/
    assert service["volumes"] == [f".:{WORKDIR}", f"${{DATA_DIR:-./data}}:{WORKDIR}/data:ro"]

    remote_dir = "/workspace/train"
    run = HostRun(spec=SPEC, remote_dir=remote_dir, env=ENV)
    config = NativeRuntime(source=tmp_path).desire(run).run_config()
    native_env = {k: v for k, v in config["env"].items() if k != "VIRTUAL_ENV"}  # which python: the venv's
    native_env["PYTHONPATH"] = ":".join(config["prepend"]["PYTHONPATH"])
    # The supervisor runs in REMOTE_DIR; the container in /workspace, which is REMOTE_DIR.
    as_compose = {k: ":".join(f"{WORKDIR}/{_relative(p, remote_dir)}".removesuffix("/.") for p in v.split(":"))
                  if k == "PYTHONPATH" else v for k, v in native_env.items()}
    assert as_compose == TRAINING_ENV


def test_a_dataset_elsewhere_is_linked_at_data_on_a_native_host_as_compose_mounts_it(tmp_path: Path) -> None:
    from deploy.runtimes.native.plan import NativeState, plan_native
    from deploy.runtimes.native.venv import BaseInterpreter

    base = BaseInterpreter(executable="/usr/bin/python3", version="3.11.9", torch="2.5.1")
    run = HostRun(spec=SPEC, remote_dir="/workspace/train", env=ENV, data_dir="/workspace/datasets/ljspeech")
    desired = NativeRuntime(source=tmp_path).desire(run)
    assert desired.data_link == "/workspace/datasets/ljspeech"
    plan = plan_native(SPEC, desired, NativeState(base=base), FACTS)
    assert "link-data" in [s.name for s in plan.steps]
    linked = plan_native(SPEC, desired, NativeState(base=base, data_link="/workspace/datasets/ljspeech"), FACTS)
    assert "link-data" not in [s.name for s in linked.steps]
    home = NativeRuntime(source=tmp_path).desire(HostRun(spec=SPEC, remote_dir="/workspace/train", env=ENV,
                                                         data_dir="/workspace/train/data"))
    assert home.data_link is None  # the default: the dataset lands at data/ itself


def test_a_project_of_gigabytes_is_a_problem_naming_deployignore() -> None:
    huge = dataclasses.replace(DESIRED, files={**FILES, "data.bin": LocalFile("/src", "data.bin", 2 << 30, 1)})
    plan = plan_deploy(SPEC, huge, current())
    assert plan.problems and ".deployignore" in plan.problems[0]
