"""The README's quick start runs as written: its command strings, read from README.md, against the local servers.

The commands are the fenced block after the ``<!-- quickstart -->`` line. They run in a folder laid
out like this checkout (the worked example's trainer at ``tests/fixtures/trainer``, a copy), with a
``.env`` that points at this machine's S3 server and sshd: a Docker host (compose) and a "pod"
without Docker (native). Between two commands the test waits as a person would (for a checkpoint
before listing them); it never changes a command.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.storage.checkpoints import list_checkpoints
from tests.harness.fab import REPO, run_fab
from tests.harness.pod import pids_in
from tests.harness.waiting import wait_until, write_dotenv

pytestmark = [pytest.mark.slow]

MARKER = "<!-- quickstart -->"
README = Path(os.environ.get("GPU_DEPLOY_README", REPO / "README.md"))  # the lead's draft can be checked the same way
TEXT = README.read_text()
FIXTURE = "tests/fixtures/trainer"

if MARKER not in TEXT:
    pytest.skip(f"{README.name} has no {MARKER} block yet", allow_module_level=True)


def quickstart_commands(text: str = TEXT) -> list[str]:
    """The command lines of the fenced block after the marker: comments and blank lines left out."""
    block = re.search(re.escape(MARKER) + r"\s*```[a-z]*\n(.*?)```", text, flags=re.S)
    assert block, f"no fenced block after {MARKER}"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_quickstart_block_deploys_the_fixture_trainer() -> None:
    commands = quickstart_commands()
    assert any(c.startswith("fab deploy-runpod") for c in commands)
    assert any(c.startswith("fab image-build") for c in commands)
    assert FIXTURE in TEXT and "TRAIN_PROJECT" in TEXT


@pytest.fixture(params=["compose", "native"])
def checkout(request, tmp_path: Path, s3_server, s3_bucket: str):
    """A folder laid out like this checkout, with a .env for the local servers and the runtime's host."""
    runtime = request.param
    # The quick start builds the image either way (a native host does not need it); the base is the tests' own.
    extra = {"BASE_IMAGE": request.getfixturevalue("base_image"), "IMAGE": "quickstart-train:latest"}
    if runtime == "compose":
        server, docker = request.getfixturevalue("ssh_server"), request.getfixturevalue("docker_client")
    else:
        server, docker = request.getfixturevalue("pod"), None
        extra["NATIVE_PYTHON"] = sys.executable  # this interpreter has torch: nothing is downloaded
    work = tmp_path / "gpu-deploy"
    shutil.copytree(REPO / FIXTURE, work / FIXTURE)
    remote_dir = f"/tmp/gpu-deploy-quickstart-{uuid.uuid4().hex[:8]}"
    values = {
        **s3_server.environ(s3_bucket, prefix=f"quickstart-{runtime}-{uuid.uuid4().hex[:6]}"),
        "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(server.port), "RUNPOD_USER": server.user,
        "RUNPOD_SSH_KEY": str(server.client_key), "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "REMOTE_DIR": remote_dir, "RUNTIME": runtime, **extra, **dotenv_of_readme(),
    }
    write_dotenv(work / ".env", values)
    yield work, values, runtime
    run_fab("stop", "--timeout=10", cwd=work)
    if docker is not None:
        for c in docker.containers.list(all=True, filters={"label": "com.docker.compose.project=gpu-deploy-"
                                                                    + Path(remote_dir).name}):
            c.remove(force=True)
    else:
        for pid in pids_in(remote_dir, "supervisor.py") + pids_in(remote_dir, "deploy.training"):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["rm", "-rf", remote_dir], check=False)


def dotenv_of_readme() -> dict[str, str]:
    """The quick start's training settings as the README writes them (TRAIN_PROJECT, TRAIN_COMMAND ...)."""
    wanted = ("TRAIN_PROJECT", "TRAIN_COMMAND", "DATASET")
    found = {}
    for match in re.finditer(r"^\s*(" + "|".join(wanted) + r")=(.*?)\s*(?:#.*)?$", TEXT, flags=re.M):
        found.setdefault(match.group(1), match.group(2))
    assert set(found) == set(wanted), f"the README's .env example lacks {set(wanted) - set(found)}"
    return found


def test_the_readme_quickstart_runs_as_written(checkout) -> None:
    work, values, runtime = checkout
    storage = Storage.from_settings(load_settings(environ=values))
    outputs: dict[str, str] = {}
    deploys = []
    for command in quickstart_commands():
        if command.startswith("fab s3.checkpoints") or command.startswith("fab sync-from-runpod"):
            wait_until(lambda: len(list_checkpoints(storage)) >= 2, 240, "two checkpoints in S3")  # a person waits
        words = shlex.split(command)
        if words[0] == "fab":
            result = run_fab(*words[1:], cwd=work, timeout=900)
        else:
            result = subprocess.run(command, shell=True, cwd=work, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        outputs[command] = result.stdout
        if words[:2] == ["fab", "deploy-runpod"]:
            deploys.append(result.stdout)

    assert "training is running" in deploys[0] and f"runtime   {runtime}" in deploys[0], deploys[0]
    listing = next(out for cmd, out in outputs.items() if cmd.startswith("fab s3.checkpoints"))
    assert "val_mel" in listing, listing
    assert list((work / "lightning_logs").rglob("events.out.tfevents.*")), sorted(work.rglob("*"))[:50]
    redeploy = deploys[-1]
    assert re.search(r"change    sync-code: 1 files", redeploy) and "change    reload" in redeploy, redeploy
    assert "load-image" not in redeploy and "install-requirements" not in redeploy, redeploy
    assert "restarting instead" not in redeploy and "recreating the service instead" not in redeploy, redeploy
