"""The operator loop on a host without Docker (a RunPod pod), over real SSH and a real S3 server.

The "pod" is a second sshd whose sessions cannot see docker, compose or containerd on their PATH, so
``deploy-runpod`` (runtime auto) picks the native runtime: the working tree is synced, a virtualenv
on top of NATIVE_PYTHON is made, and the training entrypoint runs under the supervisor. NATIVE_PYTHON
is this test's own interpreter, which already has torch: nothing is downloaded.

deploy -> training as a native process, checkpoints in S3 -> kill -9 -> the supervisor restarts it
and it resumes from S3 -> stop flushes -> sync-from-runpod brings back the logs -> deploy again
reinstalls nothing and resumes -> a deploy with no change does nothing.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import stat
import sys
import uuid
from pathlib import Path

import pytest

from deploy.storage.checkpoints import latest_checkpoint, list_checkpoints
from deploy.settings import load_settings
from deploy.storage import Storage
from tests.harness.waiting import write_dotenv, wait_until
from tests.harness.fab import run_fab
from tests.harness.servers import SshServer
from tests.harness.pod import pids_in, pod_bin

pytestmark = [pytest.mark.slow]

TRAIN_COMMAND = ("python -m deploy.training.demo fit --trainer.max_steps=100000 --trainer.max_epochs=1000 "
                 "--trainer.enable_progress_bar=false --checkpoint.every_n_train_steps=10 "
                 "--checkpoint.save_top_k=-1 --checkpoint.monitor=null --model.step_delay=0.05")


@pytest.fixture(scope="module")
def pod(tmp_path_factory, ssh_server) -> SshServer:  # ssh_server: skips (or fails in CI) without sshd
    work = tmp_path_factory.mktemp("pod")
    server = SshServer(work / "sshd", path=f"{pod_bin(work / 'bin')}:/usr/sbin:/sbin").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bucket_env(s3_server, s3_bucket: str) -> dict[str, str]:
    return s3_server.environ(s3_bucket, prefix=f"native-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def workspace(tmp_path: Path, bucket_env: dict[str, str], pod: SshServer):
    """An operator's project folder (code, ignore files, requirements, .env) and a fresh REMOTE_DIR on the pod."""
    remote_root = f"/tmp/gpu-deploy-native-{uuid.uuid4().hex[:8]}"
    remote_dir = f"{remote_root}/run"
    values = {
        **bucket_env,
        "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(pod.port), "RUNPOD_USER": pod.user,
        "RUNPOD_SSH_KEY": str(pod.client_key), "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "REMOTE_DIR": remote_dir, "TRAIN_COMMAND": TRAIN_COMMAND, "NATIVE_PYTHON": sys.executable,
        "S3_SYNC_FLUSH_TIMEOUT": "30", "RUNPOD_API_KEY": "rp-operator-only-secret",
    }
    project = tmp_path / "project"
    (project / "mytrain").mkdir(parents=True)
    (project / "mytrain" / "__init__.py").write_text("VERSION = 1\n")
    (project / "requirements.txt").write_text("python-dotenv>=1.0\n")  # already there: pip installs nothing
    (project / ".gitignore").write_text("outputs/\n*.log\n")
    (project / ".deployignore").write_text("notes.txt\n")
    (project / "notes.txt").write_text("stays here\n")
    (project / "outputs").mkdir()
    (project / "outputs" / "big.bin").write_bytes(bytes(4096))
    write_dotenv(project / ".env", values)
    yield project, remote_dir, values
    supervisor = Path(remote_dir, ".gpu-deploy", "supervisor.pid")
    if supervisor.exists():  # a failed test may leave the run going: end what this test started
        run_fab("stop", "--timeout=5", cwd=project)
    for pid in pids_in(remote_dir, "deploy.training"):
        os.kill(pid, signal.SIGKILL)
    os.system(f"rm -rf {shlex.quote(remote_root)}")


def resumed_steps(log: str) -> list[int]:
    return [int(m) for m in re.findall(r"entrypoint: resuming.*\(step (\d+)\)", log)]


def test_native_deploy_trains_restarts_after_a_crash_stops_and_redeploys(workspace, pod) -> None:
    project, remote_dir, values = workspace
    storage = Storage.from_settings(load_settings(environ=values))
    log_file = Path(remote_dir, "train.log")
    outputs: list[str] = []

    def fab(*args: str):
        result = run_fab(*args, cwd=project)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == 0, f"fab {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    dry = fab("deploy-runpod", "--dry-run")
    assert "runtime   native (the host has no Docker engine)" in dry.stdout
    assert "dry run, nothing changed" in dry.stdout and not Path(remote_dir).exists()

    first = fab("deploy-runpod")
    assert "training is running" in first.stdout, first.stdout
    for step in ("sync-code", "create-venv", "install-requirements", "install-supervisor", "start"):
        assert f"change    {step}" in first.stdout
    assert (Path(remote_dir) / "mytrain" / "__init__.py").read_text() == "VERSION = 1\n"
    assert not (Path(remote_dir) / "notes.txt").exists() and not (Path(remote_dir) / "outputs").exists()
    env = Path(remote_dir, ".env")
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert "RUNPOD_API_KEY" not in env.read_text() and "RUNPOD_HOST" not in env.read_text()

    # fab's SSH session is over; the run goes on and checkpoints reach S3
    wait_until(lambda: len(list_checkpoints(storage)) >= 2, 120, "two checkpoints in S3")
    [entrypoint] = pids_in(remote_dir, "deploy.training.entrypoint")
    secret = values["AWS_SECRET_ACCESS_KEY"]
    for pid in (entrypoint, *pids_in(remote_dir, "supervisor.py"), *pids_in(remote_dir, "deploy.training.demo")):
        assert secret not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")

    killed_at = latest_checkpoint(storage)
    os.kill(entrypoint, signal.SIGKILL)  # a crash: the supervisor restarts it and it resumes from S3
    log = wait_until(lambda: (lambda t: t if len(resumed_steps(t)) >= 1 and t.count("entrypoint: running") >= 2
                              else "")(log_file.read_text(errors="replace")), 90, "the restarted entrypoint")
    assert "the entrypoint exited with -9; restarting" in log
    resumed = resumed_steps(log)[-1]
    assert resumed >= killed_at.step
    # the crashed run's training is gone, and exactly one runs again (the entrypoint launches it after
    # recording the restart in the run ledger, so it may still be on its way)
    wait_until(lambda: len(pids_in(remote_dir, "deploy.training.demo")) == 1, 60, "exactly one training process")

    status = fab("status")
    assert "service     running" in status.stdout and "1 restarts" in status.stdout
    assert "checkpoint  step" in status.stdout
    assert "entrypoint" in fab("logs", "--tail=50").stdout

    wait_until(lambda: (lambda c: c and c.step > resumed)(latest_checkpoint(storage)), 60, "a checkpoint after resuming")
    stopped = fab("stop")
    assert "stopped" in stopped.stdout
    assert "saved step" in stopped.stdout  # a graceful stop saves the current step and says which
    log = log_file.read_text(errors="replace")
    assert "stopped: the entrypoint exited with 143" in log  # SIGTERM reached training: no kill needed
    assert not pids_in(remote_dir, "deploy.training")
    at_stop = latest_checkpoint(storage)
    assert at_stop.step > resumed

    back = project / "results"
    fab("sync-from-runpod", "--path=lightning_logs", f"--dest={back}")
    assert list(back.rglob("events.out.tfevents.*")) and list(back.rglob("*.ckpt"))

    again = fab("deploy-runpod")  # e.g. after the pod restarted: nothing to reinstall, it resumes from S3
    assert "change    start" in again.stdout and "training is running" in again.stdout
    for step in ("sync-code", "create-venv", "install-requirements", "install-supervisor", "write-env"):
        assert f"change    {step}" not in again.stdout
    wait_until(lambda: resumed_steps(log_file.read_text(errors="replace"))[-1] >= at_stop.step, 30,
               "the redeployed run to resume")

    (project / "mytrain" / "__init__.py").write_text("VERSION = 2\n")
    changed = fab("deploy-runpod")
    assert "change    sync-code: 1 files" in changed.stdout and "change    restart" in changed.stdout
    assert "install-requirements" not in changed.stdout

    noop = fab("deploy-runpod")
    assert "nothing to do" in noop.stdout and "change " not in noop.stdout

    fab("stop")
    assert not any(secret in text or "rp-operator-only-secret" in text for text in outputs)


def test_native_deploy_refuses_runpods_proxy_ssh(workspace) -> None:
    project, _remote_dir, values = workspace
    write_dotenv(project / ".env", {**values, "RUNPOD_HOST": "abc123-64411a@ssh.runpod.io"})
    result = run_fab("deploy-runpod", cwd=project)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "RunPod's proxy SSH, which has no SFTP or scp" in result.stderr
