"""The Piper section's build step runs as written: compiled parts built on the host, a metric nothing logs.

docs/training-project.md tells a Piper user to deploy, run ``fab build-ext`` and deploy again with
``--restart``, and puts ``--trainer.callbacks+=deploy.training.monitors.SkipMissingMonitors`` in the
Piper ``TRAIN_COMMAND`` so that Piper's ``val_mos`` checkpoint does not end a training on a host
that cannot download UTMOS. Both are read from the page and used unchanged against
``tests/fixtures/compiled`` (``toyvoice``): a LightningCLI that imports a core ``build_align.sh``
compiles and a bridge ``setup.py build_ext --inplace`` builds, and keeps a ``trainer_defaults``
``ModelCheckpoint(monitor="val_mos")`` while logging ``val_mel`` only, as Piper does.

The host is a RunPod-like pod (an sshd without Docker, so the native runtime), whose interpreter is
this one: torch is there and gcc is on this machine, nothing is downloaded. Between the commands the
test waits as a person would (for the first start to stop at the import) and changes one source file
before the restart, so that deploy's code sync runs over the built files and must keep them. The
compose runtime's build, in a one-off container of the train service, is
tests/integration/test_build_ext_compose.py (the tests' base image has no compiler).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sys
import uuid
from pathlib import Path

import pytest

from deploy.runtimes.code.layout import LOG
from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.storage.checkpoints import list_checkpoints
from tests.harness.fab import REPO, run_fab
from tests.harness.pod import pids_in
from tests.harness.servers import SshServer
from tests.harness.waiting import wait_until, write_dotenv

pytestmark = [pytest.mark.slow]

DOCS = REPO / "docs" / "training-project.md"
TEXT = DOCS.read_text()
MARKER = "<!-- piper-build -->"
FIXTURE = REPO / "tests" / "fixtures" / "compiled"


def build_commands(text: str = TEXT) -> list[str]:
    """The command lines of the fenced block after the marker, comments left out."""
    block = re.search(re.escape(MARKER) + r"\s*```[a-z]*\n(.*?)```", text, flags=re.S)
    assert block, f"{DOCS.name} has no fenced block after {MARKER}"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def docs_guard(text: str = TEXT) -> str:
    """The flag the Piper TRAIN_COMMAND in the docs attaches against a checkpoint whose metric is not logged."""
    command = re.search(r"^\s*TRAIN_COMMAND=(python -m piper\.train fit .*)$", text, flags=re.M)
    assert command, f"{DOCS.name} shows no Piper TRAIN_COMMAND"
    found = re.findall(r"--trainer\.callbacks\+=deploy\.training\.monitors\.\w+", command.group(1))
    assert len(found) == 1, f"the Piper TRAIN_COMMAND attaches no monitors callback: {command.group(1)}"
    assert found[0] in text.split("5. **Validation on or off**", 1)[1], "the validation step does not explain it"
    return found[0]


def test_the_docs_build_on_the_host_with_both_compose_spellings_by_hand() -> None:
    commands = build_commands()
    assert commands[0] == "fab deploy-runpod" and "fab build-ext" in commands and commands[-1].startswith(
        "fab deploy-runpod --restart"), commands
    by_hand = "run --rm --no-deps -T --entrypoint sh train -c 'bash ./build_monotonic_align.sh && python setup.py " \
              "build_ext --inplace'"
    for compose in ("docker compose", "docker-compose"):
        assert f"{compose} -f docker-compose.runpod.yml {by_hand}" in TEXT, compose


@pytest.fixture
def operator(tmp_path: Path, pod: SshServer, s3_server, s3_bucket: str):
    """The operator's folder with a .env, toyvoice beside it, a fresh REMOTE_DIR on the pod."""
    if shutil.which("cc") is None:
        pytest.fail("no C compiler (cc) on this machine: the build needs one")
    remote_root = f"/tmp/gpu-deploy-build-{uuid.uuid4().hex[:8]}"
    remote_dir = f"{remote_root}/run"
    project = tmp_path / "toyvoice"
    shutil.copytree(FIXTURE, project)
    work = tmp_path / "operator"
    work.mkdir()
    values = {
        **s3_server.environ(s3_bucket, prefix=f"build-{uuid.uuid4().hex[:6]}"),
        "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(pod.port), "RUNPOD_USER": pod.user,
        "RUNPOD_SSH_KEY": str(pod.client_key), "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "REMOTE_DIR": remote_dir, "TRAIN_PROJECT": "../toyvoice", "NATIVE_PYTHON": sys.executable,
        "TRAIN_COMMAND": f"python -m toyvoice fit --trainer.enable_progress_bar=false {docs_guard()}",
        "S3_SYNC_FLUSH_TIMEOUT": "30",
    }
    write_dotenv(work / ".env", values)
    yield work, project, Path(remote_dir), values
    for pid in pids_in(remote_dir, "supervisor.py") + pids_in(remote_dir, "deploy.training") + \
            pids_in(remote_dir, "toyvoice"):
        os.kill(pid, signal.SIGKILL)
    os.system(f"rm -rf {shlex.quote(remote_root)}")


def test_the_piper_build_steps_build_on_the_host_and_the_training_keeps_going_past_val_mos(operator) -> None:
    work, project, remote_dir, values = operator
    storage = Storage.from_settings(load_settings(environ=values))
    log = remote_dir / LOG

    def log_text() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    outputs = []
    for command in build_commands():
        if command.startswith("fab deploy-runpod --restart"):  # a person edits code before the restart
            model = project / "src" / "toyvoice" / "model.py"
            model.write_text(model.read_text() + "\n# edited\n")
        result = run_fab(*shlex.split(command)[1:], cwd=work, timeout=600)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        outputs.append((command, result.stdout))
        if command == "fab deploy-runpod":  # the first start stops at the import, as the docs say
            wait_until(lambda: "No module named 'toyvoice.align.built'" in log_text(), 120,
                       "the first start to stop at the import of the compiled core")

    built = next(out for cmd, out in outputs if cmd == "fab build-ext")
    assert "runtime   native" in built and "build     bash ./build_align.sh" in built, built
    assert "+ bash ./build_align.sh\n" in built and "+ python setup.py build_ext --inplace\n" in built, built
    assert "built src/toyvoice/align/built/core" in built and "built in" in built, built
    restart = outputs[-1][1]
    assert re.search(r"change    sync-code: 1 files", restart), restart  # the sync ran over the build ...
    assert list((remote_dir / "src" / "toyvoice" / "align" / "built").glob("core*.so"))  # ... and kept it
    assert list((remote_dir / "src" / "toyvoice").glob("bridge*.so")) and (remote_dir / "build").is_dir()

    wait_until(lambda: any("val_mel" in c.metrics for c in list_checkpoints(storage)), 180,
               "a val_mel checkpoint in S3 from the built training")
    text = wait_until(lambda: (lambda t: t if "`Trainer.fit` stopped" in t else "")(log_text()), 120,
                      "the training to finish its epochs")
    started = text.rsplit("toyvoice: bridge 1, path_sum(2, 3) = 5", 1)
    assert len(started) == 2, text[-3000:]
    assert "nothing logs 'val_mos', so ModelCheckpoint(monitor='val_mos') saves nothing" in started[1]
    assert "could not find the monitored key" not in started[1], started[1][-3000:]
    assert not [c.name for c in list_checkpoints(storage) if "val_mos" in c.name]
