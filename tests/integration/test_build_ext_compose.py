"""fab build-ext on a compose host: the real Compose (1.29 on this machine), over real SSH, in a one-off container.

REMOTE_DIR holds what a compose deploy leaves (the service file, ``.env`` naming the image, a container
of the project) and a project with a ``build_*.sh`` and a ``setup.py``. The image is the tests' busybox
with ``bash`` and a ``python`` stand-in (the tests' Python base image has no compiler: the real build of
C extensions is tests/e2e/test_piper_build.py, on the native runtime). What is checked here is the
compose part: the command line runs in a container of the ``train`` service with REMOTE_DIR at
``/workspace``, its output comes back as it is printed, what it writes stays on the host, its exit status
is the task's; and the by-hand line docs/training-project.md gives for Compose 1.29 runs as written.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest

from deploy.runtimes.compose import compose_files, project_for
from tests.harness.fab import REPO, run_fab
from tests.harness.images import build_busybox_image

pytestmark = [pytest.mark.docker]

PYTHON_STANDIN = """#!/bin/sh
# python in the busybox image: `python setup.py build_ext --inplace` leaves what a build leaves.
[ "$*" = "setup.py build_ext --inplace" ] || { echo "stand-in python cannot run: $*" >&2; exit 2; }
mkdir -p build src && echo built > build/bridge.o && echo so > src/bridge.so
echo "built src/bridge.so in $(pwd)"
"""
BASH_STANDIN = "#!/bin/sh\nexec sh \"$@\"\n"  # busybox has no bash applet; its sh runs these scripts


@pytest.fixture(scope="module")
def build_image(docker_client, tmp_path_factory: pytest.TempPathFactory) -> str:
    context = tmp_path_factory.mktemp("busybox-build")
    for name, text in (("python", PYTHON_STANDIN), ("bash", BASH_STANDIN)):
        (context / name).write_text(text)
        (context / name).chmod(0o755)
    return build_busybox_image(docker_client, context, tag="gpu-deploy-test/busybox-build:latest",
                               extra="COPY python bash /bin/\n")


@pytest.fixture
def host(ssh_server, docker_client, build_image: str, tmp_path: Path):
    """A REMOTE_DIR as a compose deploy leaves it, with a container of its project, and the fab settings for it."""
    remote_dir = tmp_path / f"build-{uuid.uuid4().hex[:8]}"
    remote_dir.mkdir()
    (remote_dir / "data").mkdir()
    for name, data in compose_files(gpu=False).items():
        (remote_dir / name).write_bytes(data)
    (remote_dir / ".env").write_text(f"IMAGE={build_image}\n")
    (remote_dir / "build_align.sh").write_text("echo \"aligning in $(pwd) as $0\"\nmkdir -p built && echo so > built/core.so\n")
    (remote_dir / "setup.py").write_text("# the stand-in python builds it\n")
    project = project_for("docker-compose", str(remote_dir), gpu=False)
    container = docker_client.containers.create(
        build_image, ["true"], labels={"com.docker.compose.project": project.name,
                                       "com.docker.compose.service": project.service})
    env = {"ENV_FILE": "", "RUNPOD_HOST": f"{ssh_server.user}@127.0.0.1:{ssh_server.port}",
           "RUNPOD_SSH_KEY": str(ssh_server.client_key), "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts),
           "REMOTE_DIR": str(remote_dir)}
    yield remote_dir, env
    container.remove(force=True)
    # What the containers wrote as root goes with the folder.
    docker_client.containers.run(build_image, ["rm", "-rf", "/w/built", "/w/build", "/w/src"], remove=True,
                                 volumes={str(remote_dir): {"bind": "/w", "mode": "rw"}})


def fab(env: dict[str, str], cwd: Path, *args: str, **more: str) -> subprocess.CompletedProcess[str]:
    return run_fab(*args, env={**env, **more}, cwd=cwd, timeout=300)


def test_build_ext_runs_the_project_build_in_a_one_off_container_and_the_result_stays(host, tmp_path: Path) -> None:
    remote_dir, env = host
    plan = fab(env, tmp_path, "build-ext", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "runtime   compose" in plan.stdout and "build     bash ./build_align.sh" in plan.stdout, plan.stdout
    assert "build     python setup.py build_ext --inplace" in plan.stdout and "Dry run: nothing was built." in plan.stdout
    assert not (remote_dir / "built").exists()

    result = fab(env, tmp_path, "build-ext")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    first, second = out.split("+ bash ./build_align.sh\n", 1)[1].split("+ python setup.py build_ext --inplace\n")
    assert "aligning in /workspace as ./build_align.sh" in first.splitlines(), out
    assert "built src/bridge.so in /workspace" in second.splitlines(), out
    assert re.search(r"built in \d+ s \(2 commands\); the training uses it from its next start", out), out
    assert (remote_dir / "built" / "core.so").is_file() and (remote_dir / "src" / "bridge.so").is_file()
    assert (remote_dir / "build" / "bridge.o").is_file()


def test_a_failing_build_exits_with_its_status_in_one_sentence_and_its_last_lines(host, tmp_path: Path) -> None:
    remote_dir, env = host
    result = fab(env, tmp_path, "build-ext", BUILD_COMMAND="echo compiling; echo 'error: no cc' >&2; exit 3")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "build     echo compiling; echo 'error: no cc' >&2; exit 3  (BUILD_COMMAND)" in result.stdout
    # The container's stdout and stderr reach Compose as two streams: their order is Compose's.
    announced = result.stdout.split("+ echo compiling; echo 'error: no cc' >&2; exit 3\n", 1)[1].splitlines()
    assert "compiling" in announced and "error: no cc" in announced, result.stdout
    first, *rest = result.stderr.strip().splitlines()
    assert first == (f"Error: `echo compiling; echo 'error: no cc' >&2; exit 3` exited 3 on 127.0.0.1:"
                     f"{env['RUNPOD_HOST'].rsplit(':', 1)[1]} in {remote_dir} (compose); its last lines:"), first
    assert {"  compiling", "  error: no cc"} <= set(rest) and "Traceback" not in result.stderr, rest


def test_the_docs_by_hand_line_for_compose_1_29_runs_as_written(host) -> None:
    remote_dir, _ = host
    text = (REPO / "docs" / "training-project.md").read_text()
    line = next(l.strip() for l in text.splitlines() if l.strip().startswith("docker-compose -f docker-compose.runpod.yml"))
    (remote_dir / "build_monotonic_align.sh").write_text("echo monotonic align built\n")
    result = subprocess.run(shlex.split(line), cwd=remote_dir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-2:] == ["monotonic align built", "built src/bridge.so in /workspace"], \
        result.stdout
