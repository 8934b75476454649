"""Your trainer, not the demo: a training project outside this package deployed with each runtime.

The project is a copy of tests/fixtures/trainer (``toytrain``: a LightningCLI package with its own
requirements.txt, checkpoints named ``...-val_mel=X.ckpt``), put in a temporary folder beside the
operator's folder and named by TRAIN_PROJECT. The same TRAIN_COMMAND, with relative paths only
(``config.yaml``, ``data``), runs in either runtime:

image-build --push (compose) -> deploy -> trains, checkpoints in S3 -> killed -> deploy again resumes
from S3 -> sync-from-runpod brings lightning_logs back -> a one-line code change redeployed: only
that file moves, no image is built or transferred, and the running training takes it warm: it stops at a step
and the new code resumes from that step.
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

from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.storage.checkpoints import latest_checkpoint, list_checkpoints
from tests.harness.fab import run_fab
from tests.harness.servers import SshServer
from tests.harness.waiting import wait_until, write_dotenv
from tests.harness.pod import pids_in

pytestmark = [pytest.mark.slow]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "trainer"
TRAIN_COMMAND = "python -m toytrain fit --config config.yaml --data.dataset_dir data"


class Host:
    """One runtime's host: how to reach it, kill its training, and clean it up."""

    def __init__(self, runtime: str, server: SshServer, remote_dir: str, docker_client=None) -> None:
        self.runtime, self.server, self.remote_dir, self.docker = runtime, server, remote_dir, docker_client
        self.project = "gpu-deploy-" + Path(remote_dir).name

    def containers(self) -> list:
        return self.docker.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"})

    def kill(self) -> None:
        """A crash or preemption: the training dies with SIGKILL, nothing flushes."""
        if self.runtime == "compose":
            for container in self.containers():
                container.kill()
        else:
            for pid in pids_in(self.remote_dir, "supervisor.py") + pids_in(self.remote_dir, "deploy.training"):
                os.kill(pid, signal.SIGKILL)
            for pid in pids_in(self.remote_dir, "toytrain"):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        if self.runtime == "compose":
            for container in self.containers():
                container.remove(force=True)
        else:
            for pid in pids_in(self.remote_dir, "supervisor.py") + pids_in(self.remote_dir, "deploy.training") + \
                    pids_in(self.remote_dir, "toytrain"):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(params=["compose", "native"])
def deployment(request, tmp_path: Path, s3_server, s3_bucket: str):
    """The operator's folder, the trainer project beside it, a fresh REMOTE_DIR on the runtime's host."""
    runtime = request.param
    if runtime == "compose":
        server, docker_client = request.getfixturevalue("ssh_server"), request.getfixturevalue("docker_client")
        extra = {"IMAGE": "toytrain-e2e:latest", "BASE_IMAGE": request.getfixturevalue("base_image")}
    else:
        server, docker_client = request.getfixturevalue("pod"), None
        extra = {"NATIVE_PYTHON": sys.executable}  # this interpreter has torch: nothing is downloaded
    remote_root = f"/tmp/gpu-deploy-trainer-{uuid.uuid4().hex[:8]}"
    remote_dir = f"{remote_root}/run-{uuid.uuid4().hex[:6]}"  # its own compose project beside other tests
    project = tmp_path / "my-trainer"
    shutil.copytree(FIXTURE, project)
    operator = tmp_path / "operator"
    operator.mkdir()
    values = {
        **s3_server.environ(s3_bucket, prefix=f"trainer-{runtime}-{uuid.uuid4().hex[:6]}"),
        "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(server.port), "RUNPOD_USER": server.user,
        "RUNPOD_SSH_KEY": str(server.client_key), "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "REMOTE_DIR": remote_dir, "TRAIN_PROJECT": "../my-trainer", "TRAIN_COMMAND": TRAIN_COMMAND,
        "DATASET": str(project / "dataset"), "RUNTIME": runtime, "S3_SYNC_FLUSH_TIMEOUT": "30", **extra,
    }
    write_dotenv(operator / ".env", values)
    host = Host(runtime, server, remote_dir, docker_client)
    yield operator, project, host, values
    host.cleanup()
    os.system(f"rm -rf {shlex.quote(remote_root)}")


def engine_images(host: Host) -> list[tuple[str, tuple[str, ...]]]:
    """The training image's tags and ids in the engine (other tests build other images meanwhile)."""
    if host.docker is None:
        return []
    return sorted((i.id, tuple(sorted(i.tags))) for i in host.docker.images.list(name="toytrain-e2e"))


def resumed_steps(log: str) -> list[int]:
    return [int(m) for m in re.findall(r"entrypoint: resuming.*\(step (\d+)\)", log)]


def test_the_trainer_project_deploys_trains_resumes_and_redeploys_a_code_change_in_seconds(deployment) -> None:
    operator, project, host, values = deployment
    storage = Storage.from_settings(load_settings(environ=values))

    def fab(*args: str):
        result = run_fab(*args, cwd=operator, timeout=900)
        assert result.returncode == 0, f"fab {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def log_text() -> str:
        return fab("logs", "--tail=400").stdout

    if host.runtime == "compose":
        built = fab("image-build", "--push", "--network=none", "--force")  # --force: an earlier run built it
        assert "change    build: the train extra and requirements.txt" in built.stdout
        assert re.search(r"Built toytrain-e2e:deps-[0-9a-f]{12}, toytrain-e2e:latest", built.stdout), built.stdout

    first = fab("deploy-runpod")
    assert f"runtime   {host.runtime}" in first.stdout and "training is running" in first.stdout
    assert f"from {project}" in first.stdout and "change    sync-code" in first.stdout
    assert Path(host.remote_dir, "toytrain", "model.py").is_file()
    assert Path(host.remote_dir, "data", "config.json").is_file()  # DATASET staged at data/, a relative path
    assert not Path(host.remote_dir, "dataset").exists()  # .deployignore: the dataset goes through the bucket

    wait_until(lambda: len(list_checkpoints(storage)) >= 2, 240, "two checkpoints in S3")
    assert "toytrain: version 1" in log_text()
    assert any("val_mel" in cp.metrics for cp in list_checkpoints(storage))
    listing = fab("s3.checkpoints")
    assert "val_mel" in listing.stdout

    killed_at = latest_checkpoint(storage)
    host.kill()
    again = fab("deploy-runpod")  # after a crash or preemption: start again, resume from S3
    assert "training is running" in again.stdout and "sync-code" not in again.stdout
    wait_until(lambda: (lambda s: s and s[-1] >= killed_at.step)(resumed_steps(log_text())), 120,
               "the run to resume from S3")

    back = operator / "results"
    fab("sync-from-runpod", "--path=lightning_logs", f"--dest={back}")
    assert list(back.rglob("events.out.tfevents.*")) and list(back.rglob("*val_mel=*.ckpt"))

    # A checkpoint the resumed training wrote itself (the entrypoint may send the killed run's unsent ones
    # first): past its setup, so a reload's stop is saved, not a SIGTERM before its handler is in place.
    resumed_from = resumed_steps(log_text())[-1]
    wait_until(lambda: (lambda c: c and c.step > resumed_from)(latest_checkpoint(storage)), 120,
               "a checkpoint after resuming")
    images_before = sorted(o.key for o in storage.list(storage.key("docker-images") + "/"))
    engine_before = engine_images(host)

    init = project / "toytrain" / "__init__.py"
    init.write_text(init.read_text().replace("VERSION = 1", "VERSION = 2"))  # the one-line change
    before_redeploy = latest_checkpoint(storage)
    changed = fab("deploy-runpod")
    assert re.search(r"change    sync-code: 1 files \(0\.0 MB\)", changed.stdout), changed.stdout
    assert "change    reload: the training takes the new code warm" in changed.stdout, changed.stdout
    for step in ("load-image", "install-requirements", "create-venv", "upload-compose", "write-env"):
        assert f"change    {step}" not in changed.stdout
    assert "Built" not in changed.stdout and "pushed" not in changed.stdout.lower()
    assert sorted(o.key for o in storage.list(storage.key("docker-images") + "/")) == images_before
    assert engine_images(host) == engine_before  # nothing built, tagged or loaded
    text = wait_until(lambda: (lambda t: t if "toytrain: version 2" in t and resumed_steps(t) else "")(log_text()),
                      120, "the changed code to run")
    before_v2 = text.split("toytrain: version 2")[0]
    assert resumed_steps(before_v2)[-1] >= before_redeploy.step
    # Warm: the entrypoint stayed up, the training stopped at a step as `fab stop` stops it, and the new code
    # resumed from exactly that step, read back from the host, in a process that imported torch meanwhile.
    reloaded = before_v2.split("entrypoint: reloading")[-1]
    saved = re.findall(r"gpu-deploy: saved step (\d+) on stop", before_v2)
    assert "entrypoint: reloading" in before_v2 and saved, before_v2[-3000:]
    assert resumed_steps(reloaded)[-1] == int(saved[-1]), before_v2[-3000:]
    assert "read from this machine's copy" in reloaded and "(warm: torch and Lightning imported ahead)" in reloaded

    noop = fab("deploy-runpod")
    assert "nothing to do" in noop.stdout

    requirements = project / "requirements.txt"
    requirements.write_text(requirements.read_text() + "tensorboardX>=2.6\n")  # a new requirement
    stale = fab("deploy-runpod", "--dry-run")
    if host.runtime == "compose":  # the image in the bucket holds the old list: one line names the command
        assert "holds older requirements" in stale.stdout and "fab image-build --push" in stale.stdout
        assert "change    build" in fab("deploy-runpod", "--build", "--dry-run").stdout
    else:  # the virtualenv is brought up to date by the deploy itself
        assert "change    install-requirements" in stale.stdout
    fab("stop")
