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
import signal
import stat
from pathlib import Path

import pytest

from deploy.storage.checkpoints import latest_checkpoint, list_checkpoints
from deploy.settings import load_settings
from deploy.storage import Storage
from tests.harness.waiting import write_dotenv, wait_until
from tests.harness.fab import run_fab
from tests.harness.pod import pids_in

pytestmark = [pytest.mark.slow]

def resumed_steps(log: str) -> list[int]:
    return [int(m) for m in re.findall(r"entrypoint: resuming.*\(step (\d+)\)", log)]


def test_native_deploy_trains_restarts_after_a_crash_stops_and_redeploys(native_workspace, pod) -> None:
    project, remote_dir, values = native_workspace
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
    resume_line = [line for line in log_file.read_text(errors="replace").splitlines()
                   if "entrypoint: resuming" in line][-1]
    assert f"(step {at_stop.step}); read from this machine's copy (its sha256 matches)" in resume_line, resume_line

    (project / "mytrain" / "__init__.py").write_text("VERSION = 2\n")
    changed = fab("deploy-runpod")
    assert "change    sync-code: 1 files" in changed.stdout and "change    reload" in changed.stdout, changed.stdout
    assert "install-requirements" not in changed.stdout and "restarting instead" not in changed.stdout
    log = log_file.read_text(errors="replace").split("entrypoint: reloading")[-1]
    assert "(warm: torch and Lightning imported ahead)" in log and "read from this machine's copy" in log, log[-3000:]

    noop = fab("deploy-runpod")
    assert "nothing to do" in noop.stdout and "change " not in noop.stdout

    fab("stop")
    assert not any(secret in text or "rp-operator-only-secret" in text for text in outputs)


def test_native_deploy_refuses_runpods_proxy_ssh(native_workspace) -> None:
    project, _remote_dir, values = native_workspace
    write_dotenv(project / ".env", {**values, "RUNPOD_HOST": "abc123-64411a@ssh.runpod.io"})
    result = run_fab("deploy-runpod", cwd=project)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "RunPod's proxy SSH, which has no SFTP or scp" in result.stderr
