"""fab build-ext: which commands build the project, in which order, where they run, what a failure says.

The plan is pure (the build files REMOTE_DIR has, BUILD_COMMAND -> commands); each runtime's service
gives the shell line that runs a command where the training runs; the run prints each command's
output as it comes and ends at the first failure with one sentence, its exit code and last lines.
"""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest

from deploy.errors import HostError
from deploy.flow import build
from deploy.flow.build import SETUP_COMMAND, BuildFailed, BuildPlan, plan_build, prepare_build, run_build
from deploy.runtimes.base import ServiceState
from deploy.runtimes.code.sync import plan_sync
from deploy.runtimes.code.tree import LocalFile
from deploy.runtimes.compose import project_for
from deploy.runtimes.native.service import NativeService


def test_build_scripts_run_first_by_name_then_setup_py() -> None:
    found = ["setup.py", "build_monotonic_align.sh", "build_a.sh", "README.md"]
    assert plan_build(found) == ("bash ./build_a.sh", "bash ./build_monotonic_align.sh", SETUP_COMMAND)
    assert SETUP_COMMAND == "python setup.py build_ext --inplace"


def test_a_project_with_only_one_kind_of_build_file() -> None:
    assert plan_build(["build_monotonic_align.sh"]) == ("bash ./build_monotonic_align.sh",)
    assert plan_build(["setup.py", "pyproject.toml"]) == (SETUP_COMMAND,)


def test_a_project_with_nothing_to_build_plans_nothing_and_says_so() -> None:
    assert plan_build(["pyproject.toml", "build.sh", "build_x.py"]) == ()
    plan = BuildPlan(host="root@gpu:22", remote_dir="/w", runtime="native", commands=(), configured=False)
    assert plan.noop and plan.describe()[-1] == ("build     nothing to build: no build_*.sh or setup.py at the "
                                                 "project's root in /w, and BUILD_COMMAND is empty")


def test_build_command_replaces_the_project_files() -> None:
    assert plan_build(["setup.py", "build_a.sh"], "  make -C native  ") == ("make -C native",)
    assert plan_build([], "make") == ("make",)
    plan = BuildPlan(host="h", remote_dir="/w", runtime="compose", commands=("make",), configured=True)
    assert plan.describe()[-1] == "build     make  (BUILD_COMMAND)"


def test_a_script_name_the_host_sent_is_quoted() -> None:
    assert plan_build(["build_$(reboot) x.sh"]) == ("bash './build_$(reboot) x.sh'",)


def test_compose_runs_a_command_in_a_one_off_container_of_the_train_service_with_either_spelling() -> None:
    v1 = project_for("docker-compose", "/workspace/train", gpu=True).shell_command("bash ./build_a.sh")
    assert v1 == ("cd /workspace/train && docker-compose -p gpu-deploy-train -f docker-compose.runpod.yml "
                  "-f docker-compose.gpu.yml run --rm --no-deps -T --entrypoint sh train -c 'bash ./build_a.sh'")
    v2 = project_for("docker compose", "/workspace/train", gpu=False).shell_command(SETUP_COMMAND)
    assert v2 == ("cd /workspace/train && docker compose -p gpu-deploy-train -f docker-compose.runpod.yml "
                  "run --rm --no-deps -T --entrypoint sh train -c 'python setup.py build_ext --inplace'")


def test_native_runs_a_command_with_the_run_s_virtualenv_and_code_first() -> None:
    line = NativeService("/workspace/train").shell_command("bash ./build_a.sh")
    assert line == ("cd /workspace/train && exec env VIRTUAL_ENV=/workspace/train/.venv PYTHONUNBUFFERED=1 "
                    "PATH=/workspace/train/.venv/bin${PATH:+:$PATH} "
                    "PYTHONPATH=/workspace/train:/workspace/train/src:/workspace/train/.gpu-deploy/app"
                    "${PYTHONPATH:+:$PYTHONPATH} sh -c 'bash ./build_a.sh'")


def test_the_native_build_sees_the_paths_the_training_sees() -> None:
    from deploy.runtimes.native.layout import training_paths
    from tests.unit.test_native import DESIRED

    assert DESIRED.run_config()["prepend"] == training_paths(DESIRED.remote_dir)


def test_the_code_sync_never_removes_or_overwrites_what_a_build_left_on_the_host() -> None:
    """Only files a deploy shipped (the manifest) are removed, only the tree's files are sent."""
    tree = {"setup.py": LocalFile("/p", "setup.py", 10, 100), "src/x/core.pyx": LocalFile("/p", "src/x/core.pyx", 5, 100)}
    shipped = {"setup.py": (10, 100), "src/x/core.pyx": (5, 100)}
    sync = plan_sync(tree, shipped, manifest=list(shipped), local_rsync=False, host_tools=())
    assert sync.noop  # the host's src/x/core.cpython-311-x86_64-linux-gnu.so and build/ are no part of it
    gone = plan_sync({"setup.py": tree["setup.py"]}, shipped, manifest=list(shipped), local_rsync=False, host_tools=())
    assert gone.delete == ("src/x/core.pyx",)  # a file the tree dropped goes; nothing the build wrote does


class Channel:
    """A paramiko channel that answers ``exec_command`` with output and an exit status."""

    def __init__(self, replies: dict[str, tuple[bytes, int]], ran: list[str]) -> None:
        self.replies, self.ran, self.chunks, self.code = replies, ran, [], 0

    def set_combine_stderr(self, combine: bool) -> None:
        pass

    def exec_command(self, line: str) -> None:
        self.ran.append(line)
        output, self.code = next(v for k, v in self.replies.items() if k in line)
        self.chunks = [output[i:i + 7] for i in range(0, len(output), 7)]  # split mid-line, as a network does

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def recv_exit_status(self) -> int:
        return self.code

    def close(self) -> None:
        pass


class Conn:
    host, port = "gpu", 22

    def __init__(self, replies: dict[str, tuple[bytes, int]]) -> None:
        self.replies, self.ran = replies, []

    def create_session(self) -> Channel:
        return Channel(self.replies, self.ran)


def _plan(*commands: str) -> BuildPlan:
    return BuildPlan(host="root@gpu:22", remote_dir="/w", runtime="native", commands=commands, configured=False,
                     service=NativeService("/w"))


def test_each_command_is_announced_and_its_output_printed_clean() -> None:
    conn = Conn({"build_a": (b"cythonize core.pyx\n\x1b[31mcompiling\x1b[0m 10%\rcompiling 100%\n", 0),
                 "setup.py": (b"copying build/lib/x.so -> src/x\n", 0)})
    out = io.StringIO()
    result = run_build(conn, _plan("bash ./build_a.sh", SETUP_COMMAND), out)
    assert out.getvalue() == ("+ bash ./build_a.sh\ncythonize core.pyx\ncompiling 100%\n"
                              "+ python setup.py build_ext --inplace\ncopying build/lib/x.so -> src/x\n")
    assert result.commands == ("bash ./build_a.sh", SETUP_COMMAND) and len(conn.ran) == 2
    assert "built in" in result.summary() and "fab deploy-runpod --restart" in result.summary()


def test_a_failing_command_ends_the_build_with_its_name_exit_code_and_last_lines() -> None:
    lines = b"".join(b"line %d\n" % i for i in range(30)) + b"error: command 'gcc' failed: No such file\n"
    conn = Conn({"build_a": (lines, 1), "setup.py": (b"", 0)})
    with pytest.raises(BuildFailed) as err:
        run_build(conn, _plan("bash ./build_a.sh", SETUP_COMMAND), io.StringIO())
    message = str(err.value)
    first, _, rest = message.partition("\n")
    assert first == "`bash ./build_a.sh` exited 1 on gpu:22 in /w (native); its last lines:"
    assert rest.splitlines()[-1] == "  error: command 'gcc' failed: No such file" and "line 16" in rest
    assert "line 15" not in rest and err.value.exit_code == 1  # the last 15 lines
    assert len(conn.ran) == 1  # setup.py never ran


def test_an_exit_status_outside_a_byte_becomes_1() -> None:
    with pytest.raises(BuildFailed) as err:
        run_build(Conn({"make": (b"", -1)}), _plan("make"), io.StringIO())
    assert err.value.exit_code == 1 and "`make` exited -1" in str(err.value) and "(no output)" in str(err.value)


class Listing:
    """``conn.run`` for the build files' look: prints ``found``, one name a line."""

    host, port = "gpu", 22

    def __init__(self, found: list[str]) -> None:
        self.found = found

    def run(self, line: str, **kwargs: Any) -> Any:
        return SimpleNamespace(ok=True, stdout="".join(f"{n}\n" for n in self.found), stderr="", exited=0)


class Deployed:
    kind = "supervisor"

    def __init__(self, exists: bool) -> None:
        self.exists = exists

    def state(self, conn: Any) -> ServiceState:
        return ServiceState(exists=self.exists, status="failed" if self.exists else "absent")


def test_the_plan_comes_from_the_files_the_host_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "host_service", lambda conn, remote_dir: ("native", Deployed(True)))
    plan = prepare_build(Listing(["build_monotonic_align.sh", "setup.py"]), "root@gpu:22", "/w")
    assert plan.commands == ("bash ./build_monotonic_align.sh", SETUP_COMMAND) and plan.runtime == "native"
    assert plan.describe()[:2] == ["host      root@gpu:22", "runtime   native (in /w)"]


def test_a_host_where_nothing_was_deployed_is_one_sentence_naming_the_deploy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "host_service", lambda conn, remote_dir: ("compose", Deployed(False)))
    with pytest.raises(HostError) as err:
        prepare_build(Listing(["setup.py"]), "root@gpu:22", "/w")
    assert str(err.value) == ("Nothing is deployed in /w on gpu:22 (no training supervisor of the compose runtime); "
                              "run fab deploy-runpod first: it ships the code and the training environment the "
                              "build runs in.")
