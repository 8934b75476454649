"""The native runtime's plan: what changes on a host without Docker, decided from what it has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.errors import ConfigError, HostError
from deploy.flow.choose import choose_runtime
from deploy.flow.sources import resolve_image
from deploy.hosts import HostSpec
from deploy.hosts.envfile import EnvShipment, plan_env
from deploy.hosts.probe import HostFacts, parse_facts
from deploy.runtimes.base import ServiceState
from deploy.runtimes.code.layout import APP
from deploy.runtimes.code.shipped import host_modules, library_files
from deploy.runtimes.code.tree import LocalFile, select_files
from deploy.runtimes.compose import plan_deploy
from deploy.runtimes.native.plan import NativeDesired, NativeState, parse_gathered, plan_native, release_digest
from deploy.runtimes.native.service import parse_service, service_state
from deploy.runtimes.native.venv import BaseInterpreter, sha256, train_requirements
from deploy.settings import Secret, load_settings
from tests.harness.stack import needs_training

SPEC = HostSpec("203.0.113.10", 40022)
ENV = EnvShipment(keys=("AWS_SECRET_ACCESS_KEY", "S3_BUCKET"), _content=Secret("S3_BUCKET=b\nAWS_SECRET_ACCESS_KEY=x\n"))
FILES = {"train.py": LocalFile("/src", "train.py", 120, 1_700_000_000),
         "pkg/model.py": LocalFile("/src", "pkg/model.py", 3000, 1_700_000_100),
         f"{APP}/deploy/remote/supervisor.py": LocalFile("/repo", "deploy/remote/supervisor.py", 9000, 1_700_000_200)}
DESIRED = NativeDesired(remote_dir="/workspace/train", env=ENV, python="python3", source="/src", files=FILES,
                        train_requirements=("torch>=2.1", "lightning>=2.2"), user_requirements="numpy\n",
                        local_rsync=True)
BASE = BaseInterpreter("/usr/bin/python3", "3.11.9", ("/usr/local/lib/python3.11/dist-packages",), "2.5.1+cu124")
FACTS = HostFacts(os="Ubuntu 22.04", is_root=True, python3="3.11.9", tools=frozenset({"rsync", "curl"}),
                  remote_dir_exists=True, native=True)
RUNNING = ServiceState(exists=True, running=True, status="running", restarts=0, container="pid 42")


def healthy(desired: NativeDesired = DESIRED, base: BaseInterpreter = BASE, **changes) -> NativeState:
    """The state a host is in right after deploying ``desired``."""
    state = NativeState(
        base=base, meta_exists=True, files={rel: (f.size, f.mtime) for rel, f in desired.files.items()},
        manifest=frozenset(desired.files),
        venv={"base": base.identity, "requirements": desired.requirements_digest(base)},
        env_digest=desired.env.digest,
        supervisor_digests={n: sha256(b) for n, b in desired.supervisor_files().items()},
        release=release_digest(desired, base), service=RUNNING)
    return NativeState(**{**state.__dict__, **changes})


def names(plan) -> list[str]:
    return [s.name for s in plan.steps]


def with_files(files: dict[str, LocalFile], **fields) -> NativeDesired:
    return NativeDesired(**{**DESIRED.__dict__, "files": files, **fields})


# --------------------------------------------------------------------------- choosing the runtime


def test_auto_picks_compose_only_where_docker_and_compose_run() -> None:
    assert choose_runtime("auto", HostFacts(docker="26.1", compose_v2="2.27"))[0] == "compose"
    assert choose_runtime("auto", HostFacts()) == ("native", "the host has no Docker engine")
    assert choose_runtime("auto", HostFacts(docker_client=True))[0] == "native"  # a pod with the CLI only
    assert choose_runtime("auto", HostFacts(docker="26.1"))[0] == "native"


def test_auto_keeps_a_native_deploy_native_even_on_a_docker_host() -> None:
    assert choose_runtime("auto", HostFacts(docker="26.1", compose_v2="2.27", native=True))[0] == "native"


def test_an_explicit_runtime_wins_and_a_bad_one_is_named() -> None:
    assert choose_runtime("native", HostFacts(docker="26.1", compose_v2="2.27"))[0] == "native"
    assert choose_runtime("compose", HostFacts())[0] == "compose"
    with pytest.raises(ConfigError, match="'podman' is not one of auto, compose, native"):
        choose_runtime("podman", HostFacts())


# --------------------------------------------------------------------------- the plan


def test_a_folder_without_our_metadata_gets_it_created() -> None:
    plan = plan_native(SPEC, DESIRED, healthy(meta_exists=False), FACTS)
    assert plan.steps[0].name == "create-dir" and plan.steps[0].detail.endswith("/workspace/train/.gpu-deploy")


def test_a_fresh_pod_gets_every_step_in_order() -> None:
    state = NativeState(base=BASE)
    facts = HostFacts(tools=frozenset({"rsync"}))
    plan = plan_native(SPEC, DESIRED, state, facts)
    assert names(plan) == ["create-dir", "write-env", "sync-code", "create-venv", "install-requirements",
                           "install-supervisor", "start"]
    assert plan.sync.send == tuple(sorted(FILES)) and plan.sync.method == "sftp" and not plan.problems  # 3 small files
    assert "torch pinned to 2.5.1+cu124" in plan.steps[4].detail


def test_a_second_deploy_with_no_change_plans_nothing() -> None:
    plan = plan_native(SPEC, DESIRED, healthy(), FACTS)
    assert plan.noop and not plan.problems
    assert "changes   none: training runs this code with these settings" in plan.describe()


def test_a_changed_file_is_sent_alone_and_the_run_reloaded_warm() -> None:
    files = {**FILES, "train.py": LocalFile("/src", "train.py", 121, 1_700_000_500)}
    plan = plan_native(SPEC, with_files(files), healthy(), FACTS)
    assert names(plan) == ["sync-code", "reload"]
    assert "takes the new code warm" in plan.steps[1].detail
    assert plan.sync.send == ("train.py",) and plan.sync.delete == ()


def test_a_file_gone_from_the_tree_is_removed_from_the_host() -> None:
    files = {k: v for k, v in FILES.items() if k != "pkg/model.py"}
    plan = plan_native(SPEC, with_files(files), healthy(), FACTS)
    assert plan.sync.send == () and plan.sync.delete == ("pkg/model.py",)
    assert names(plan) == ["sync-code", "reload"]


def test_changed_requirements_reinstall_into_the_same_venv() -> None:
    plan = plan_native(SPEC, with_files(FILES, user_requirements="numpy\nscipy\n"), healthy(), FACTS)
    assert names(plan) == ["install-requirements", "restart"]


def test_a_new_image_with_another_torch_rebuilds_the_venv() -> None:
    newer = BaseInterpreter("/usr/bin/python3", "3.11.9", BASE.site, "2.6.0+cu126")
    state = healthy()
    plan = plan_native(SPEC, DESIRED, NativeState(**{**state.__dict__, "base": newer}), FACTS)
    assert names(plan) == ["create-venv", "install-requirements", "restart"]
    assert "the interpreter changed" in plan.steps[0].detail


def test_a_stopped_run_is_started_without_reinstalling() -> None:
    plan = plan_native(SPEC, DESIRED, healthy(service=ServiceState(exists=True, status="stopped")), FACTS)
    assert names(plan) == ["start"]


def test_restart_flag_restarts_a_healthy_run() -> None:
    plan = plan_native(SPEC, with_files(FILES, restart=True), healthy(), FACTS)
    assert names(plan) == ["restart"]


def test_sftp_when_either_end_lacks_rsync() -> None:
    no_rsync = HostFacts(**{**FACTS.__dict__, "tools": frozenset()})
    assert plan_native(SPEC, DESIRED, NativeState(base=BASE), no_rsync).sync.method == "sftp"
    assert plan_native(SPEC, with_files(FILES, local_rsync=False), NativeState(base=BASE), FACTS).sync.method == "sftp"


def test_a_missing_interpreter_is_one_sentence_naming_the_setting() -> None:
    state = parse_gathered("", "sh: 1: /opt/conda/bin/python: not found\n")
    plan = plan_native(SPEC, DESIRED, state, FACTS)
    assert plan.problems[0].startswith("NATIVE_PYTHON (python3) does not run on the host "
                                       "(sh: 1: /opt/conda/bin/python: not found)")


def test_an_interpreter_without_pip_or_venv_is_a_problem() -> None:
    bare = BaseInterpreter("/usr/bin/python3", "3.11.2", has_venv=False, has_pip=False)
    plan = plan_native(SPEC, DESIRED, NativeState(base=bare), FACTS)
    assert "apt-get install python3-pip python3.11-venv" in plan.problems[0]


def test_a_compose_deploy_in_remote_dir_is_a_problem() -> None:
    plan = plan_native(SPEC, DESIRED, healthy(compose_deploy=True), FACTS)
    assert "holds a compose deploy" in plan.problems[0] and "--runtime=compose" in plan.problems[0]


def test_a_huge_working_tree_is_refused() -> None:
    files = {**FILES, "data.bin": LocalFile("/src", "data.bin", 2 << 30, 1)}
    plan = plan_native(SPEC, with_files(files), healthy(), FACTS)
    assert any(".deployignore" in p for p in plan.problems)


def test_plan_shows_key_names_never_values() -> None:
    text = "\n".join(plan_native(SPEC, DESIRED, NativeState(base=BASE), FACTS).describe())
    assert "AWS_SECRET_ACCESS_KEY" in text and "S3_BUCKET=b" not in text and "=x" not in text


def test_run_config_carries_no_secret() -> None:
    text = DESIRED.supervisor_files()["run.json"].decode()
    assert "deploy.training.entrypoint" in text and '"CHECKPOINT": "s3"' in text
    assert "AWS_SECRET_ACCESS_KEY" not in text and "=x" not in text


# --------------------------------------------------------------------------- what the host reports


def test_gathered_json_becomes_state_and_our_own_compose_file_is_not_a_compose_deploy() -> None:
    out = ('{"base": {"executable": "/usr/bin/python3", "version": "3.11.9", "site": ["/s"], "torch": null, '
           '"has_venv": true, "has_pip": true}, "manifest": ["a.py", "docker-compose.runpod.yml"], '
           '"files": {"a.py": [3, 10]}, "venv": null, "supervisor": {"run.json": null}, "release": null, '
           '"compose": true}\n')
    state = parse_gathered(out)
    assert state.base == BaseInterpreter("/usr/bin/python3", "3.11.9", ("/s",), None)
    assert state.files == {"a.py": (3, 10)} and state.venv is None and not state.compose_deploy


def test_service_state_from_the_supervisor() -> None:
    assert parse_service("") == ServiceState(exists=False)
    assert parse_service('{"alive": false, "training": {"running": false, "pid": null}}') == ServiceState(exists=False)
    running = parse_service('{"alive": true, "status": "running", "restarts": 2, "child": 77, '
                            '"started_at": "2026-01-01T00:00:00Z", "training": {"running": true, "pid": 77}}')
    assert running.running and running.restarts == 2 and running.container == "pid 77"
    dead = parse_service('{"alive": false, "status": "running", "restarts": 0}')  # the pod restarted
    assert not dead.running and dead.status == "dead"
    assert parse_service('{"alive": false, "status": "stopped"}').status == "stopped"


def test_a_training_whose_supervisor_was_killed_is_orphaned_not_running() -> None:
    orphan = parse_service('{"alive": false, "status": "orphaned", "training": {"running": true, "pid": 4242}}')
    assert orphan.exists and not orphan.running and orphan.status == "orphaned" and orphan.container == "pid 4242"
    # native_facts folds it into the state it gathers for the plan: a deploy then plans a start
    assert service_state(False, {"status": "orphaned"}).status == "orphaned"


def test_native_facts_sees_a_held_train_lock(tmp_path: Path) -> None:
    import fcntl
    import importlib.util

    spec = importlib.util.spec_from_file_location("native_facts_under_test",
                                                  Path(__file__).resolve().parents[2] / "deploy/remote/native_facts.py")
    facts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(facts)
    (tmp_path / ".gpu-deploy").mkdir()
    (tmp_path / ".gpu-deploy/state.json").write_text('{"status": "running"}')
    assert facts.service(str(tmp_path), ".gpu-deploy") == {"alive": False, "state": {"status": "running"},
                                                          "training": {"running": False}}
    with open(tmp_path / ".gpu-deploy/train.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert facts.service(str(tmp_path), ".gpu-deploy")["state"]["status"] == "orphaned"


# --------------------------------------------------------------------------- the working tree


def write(root: Path, rel: str, text: str = "x") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_select_files_honours_gitignore_deployignore_and_never_ships_secrets(tmp_path: Path) -> None:
    for rel in ("train.py", "pkg/model.py", "pkg/cache/big.bin", "logs/run.log", "keep.log", "notes/todo.md",
                ".env", ".env.local", ".git/HEAD", ".venv/bin/python", "pkg/__pycache__/m.pyc",
                "lightning_logs/v0/events", "sub/.gitignore", "sub/a.tmp", "sub/b.py", "build/out.o",
                "src/build/keep.py"):
        write(tmp_path, rel)
    write(tmp_path, ".gitignore", "# comment\n*.log\n!keep.log\ncache/\n/build/\n.env\n")
    write(tmp_path, "sub/.gitignore", "*.tmp\n")
    write(tmp_path, ".deployignore", "notes/\n!.env\n")
    files = set(select_files(tmp_path))
    assert files == {"train.py", "pkg/model.py", "keep.log", ".gitignore", ".deployignore", "sub/.gitignore",
                     "sub/b.py", "src/build/keep.py"}


def test_select_files_records_size_mtime_and_exec_bit(tmp_path: Path) -> None:
    write(tmp_path, "run.sh", "#!/bin/sh\n")
    os.chmod(tmp_path / "run.sh", 0o755)
    os.utime(tmp_path / "run.sh", (1_700_000_000.7, 1_700_000_000.7))
    f = select_files(tmp_path)["run.sh"]
    assert (f.size, f.mtime, f.executable, f.path) == (10, 1_700_000_000, True, str(tmp_path / "run.sh"))


def test_only_the_training_code_and_what_it_imports_travel() -> None:
    lib = library_files()
    assert f"{APP}/deploy/training/entrypoint.py" in lib and f"{APP}/deploy/remote/supervisor.py" in lib
    assert f"{APP}/deploy/__init__.py" in lib and f"{APP}/deploy/settings.py" in lib
    assert not any("__pycache__" in rel for rel in lib)
    for room in ("hosts", "runtimes", "flow", "images", "dev"):  # the operator's code stays home
        assert not any(rel.startswith(f"{APP}/deploy/{room}/") for rel in lib), room
    assert any(r.startswith("torch") for r in train_requirements())


def test_the_runtime_choice_stays_on_the_laptop() -> None:
    # Switching --runtime or NATIVE_PYTHON must not change the host's .env, which would restart training.
    settings = load_settings(overrides={"RUNTIME": "native", "NATIVE_PYTHON": "/opt/conda/bin/python",
                                        "S3_BUCKET": "my-bucket"}, environ={})
    keys = plan_env(settings, environ={}).keys
    assert "S3_BUCKET" in keys and "RUNTIME" not in keys and "NATIVE_PYTHON" not in keys


def test_the_probe_reports_a_native_deploy() -> None:
    assert parse_facts("os=Ubuntu\nnative=1\n").native and not parse_facts("os=Ubuntu\nnative=0\n").native


def test_compose_refuses_a_folder_that_holds_a_native_deploy() -> None:
    from tests.unit.test_rollout import DESIRED as COMPOSE_DESIRED, FACTS as DOCKER_FACTS, healthy as compose_healthy

    facts = HostFacts(**{**DOCKER_FACTS.__dict__, "native": True})
    plan = plan_deploy(SPEC, COMPOSE_DESIRED, compose_healthy(facts))
    assert any("holds a native deploy" in p and "--runtime=native" in p for p in plan.problems)


class MissingImage:
    def image_id(self, ref: str):
        raise HostError(f"The bucket has no image {ref}; push it first.")


def test_a_missing_image_only_matters_to_compose_hosts() -> None:
    assert resolve_image(MissingImage(), "t:v1", "native") == ("", 0, None)
    assert resolve_image(MissingImage(), "t:v1", "auto") == ("", 0, "The bucket has no image t:v1; push it first.")
    with pytest.raises(HostError, match="push it first"):
        resolve_image(MissingImage(), "t:v1", "compose")


@needs_training
def test_the_shipped_closure_covers_what_importing_the_host_code_loads() -> None:
    # A fresh interpreter imports every module of training/ and remote/; every deploy module that
    # loads must be in what the native runtime ships (else the host fails with ModuleNotFoundError).
    shipped = host_modules()
    roots = sorted(m for m in shipped if m.startswith(("deploy.training.", "deploy.remote.")))
    code = ("import importlib, json, sys\n"
            f"for name in {roots!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'deploy' or m.startswith('deploy.'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       timeout=300).stdout)
    assert set(loaded) <= shipped, sorted(set(loaded) - shipped)
    assert {"deploy.training.entrypoint", "deploy.remote.supervisor", "deploy.storage"} <= shipped


def test_a_few_small_files_go_by_sftp_over_the_open_connection_and_more_by_rsync() -> None:
    from deploy.runtimes.code.sync import SFTP_UP_TO, sync_method

    files, size = SFTP_UP_TO
    assert sync_method(True, {"rsync"}, 1, 74) == "sftp"                     # a one-line change: no second ssh
    assert sync_method(True, {"rsync"}, files, size) == "sftp"
    assert sync_method(True, {"rsync"}, files + 1, 100) == "rsync"
    assert sync_method(True, {"rsync"}, 1, size + 1) == "rsync"
    assert sync_method(False, {"rsync"}, 500, 1 << 30) == "sftp"             # no rsync here
    assert sync_method(True, set(), 500, 1 << 30) == "sftp"                  # none on the host


def test_the_import_lines_read_name_what_parsing_each_file_names() -> None:
    import ast

    from deploy.runtimes.code.shipped import PACKAGE_ROOT, _imports

    def parsed(path: Path) -> set[str]:
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        return {name for name in found if name == "deploy" or name.startswith("deploy.")}

    files = sorted((PACKAGE_ROOT / "deploy").rglob("*.py"))
    assert len(files) > 100
    assert {p: _imports(p) for p in files if _imports(p) != parsed(p)} == {}
