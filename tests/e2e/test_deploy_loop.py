"""The whole operator loop over real SSH, a real S3 server and the real Docker engine.

image-to-s3 -> dataset to the bucket -> deploy-runpod -> training in the container, checkpoints in
S3 -> sync-from-runpod -> the container killed -> deploy-runpod --restart resumes from S3 -> a second
deploy changes nothing -> stop. The probe finds no GPU here, so the service runs without a GPU
reservation, as it would for a CPU-only user.
"""

from __future__ import annotations

import shlex
import stat
import uuid
from pathlib import Path

import pytest

from deploy.storage.checkpoints import latest_checkpoint, list_checkpoints
from deploy.settings import load_settings
from deploy.storage import Storage
from tests.harness.waiting import write_dotenv, wait_until
from tests.harness.fab import run_fab
from tests.harness.servers import SshServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TRAIN_COMMAND = ("python -m deploy.training.demo fit --trainer.max_steps=100000 --trainer.max_epochs=1000 "
                 "--trainer.enable_progress_bar=false --checkpoint.every_n_train_steps=10 "
                 "--checkpoint.save_top_k=-1 --checkpoint.monitor=null --model.step_delay=0.05")




@pytest.fixture(scope="module")
def bucket_env(s3_server, s3_bucket: str, training_image: str, tmp_path_factory) -> dict[str, str]:
    """One corner of the bucket for this module, holding the training image (pushed once)."""
    env = s3_server.environ(s3_bucket, prefix=f"e2e-{uuid.uuid4().hex[:8]}")
    folder = tmp_path_factory.mktemp("push")
    write_dotenv(folder / ".env", {**env, "IMAGE": training_image})
    result = run_fab("image-to-s3", cwd=folder)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return env


@pytest.fixture
def workspace(tmp_path: Path, bucket_env: dict[str, str], ssh_server: SshServer, training_image: str,
              ssh_connection):
    """An operator's folder with a .env for the sshd host, and a fresh REMOTE_DIR on the host."""
    remote_root = f"/tmp/gpu-deploy-e2e-{uuid.uuid4().hex[:8]}"
    remote_dir = f"{remote_root}/run-{uuid.uuid4().hex[:6]}"
    values = {
        **bucket_env,
        "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(ssh_server.port), "RUNPOD_USER": ssh_server.user,
        "RUNPOD_SSH_KEY": str(ssh_server.client_key), "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "REMOTE_DIR": remote_dir, "IMAGE": training_image, "TRAIN_COMMAND": TRAIN_COMMAND,
        "RUNPOD_API_KEY": "rp-operator-only-secret",
    }
    operator = tmp_path / "operator"
    operator.mkdir()
    write_dotenv(operator / ".env", values)
    yield operator, remote_dir, values
    project = "gpu-deploy-" + Path(remote_dir).name
    ssh_connection.run(f"docker ps -aq --filter label=com.docker.compose.project={project} | xargs -r docker rm -f; "
                       f"rm -rf {shlex.quote(remote_root)}", warn=True)


def storage_of(values: dict[str, str]) -> Storage:
    return Storage.from_settings(load_settings(environ=values))


def test_deploy_train_sync_kill_resume(workspace, ssh_connection, docker_client) -> None:
    operator, remote_dir, values = workspace
    storage = storage_of(values)
    outputs: list[str] = []

    def fab(*args: str, ok: bool = True):
        result = run_fab(*args, cwd=operator)
        outputs.append(result.stdout + result.stderr)
        if ok:
            assert result.returncode == 0, f"fab {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    pushed_again = fab("image-to-s3", f"--image={values['IMAGE']}")  # the module fixture pushed it
    assert "nothing to do" in (pushed_again.stdout + pushed_again.stderr).lower()

    dataset = operator / "tiny"
    (dataset / "wavs").mkdir(parents=True)
    (dataset / "config.json").write_text('{"sample_rate": 22050}')
    (dataset / "metadata.csv").write_text("a|hello\n")
    (dataset / "wavs/a.wav").write_bytes(b"RIFF" + bytes(2048))
    fab("s3.upload-dataset", f"--path={dataset}", "--name=tiny")

    dry = fab("deploy-runpod", "--dataset=tiny", "--dry-run")
    assert "dry run, nothing changed" in dry.stdout
    assert ssh_connection.run(f"test -e {remote_dir}", warn=True).failed

    first = fab("deploy-runpod", "--dataset=tiny")
    assert "training is running" in first.stdout
    assert "AWS_SECRET_ACCESS_KEY" in first.stdout  # key names are shown ...
    mode = ssh_connection.sftp().stat(f"{remote_dir}/.env").st_mode
    assert stat.S_IMODE(mode) == 0o600
    shipped = ssh_connection.run(f"cat {remote_dir}/.env").stdout
    assert "RUNPOD_API_KEY" not in shipped and "RUNPOD_HOST" not in shipped
    assert ssh_connection.run(f"cat {remote_dir}/data/metadata.csv").stdout == "a|hello\n"

    wait_until(lambda: len(list_checkpoints(storage)) >= 3, 180, "three checkpoints in S3")

    status = fab("status")
    assert "running" in status.stdout and "checkpoint  step" in status.stdout

    back = operator / "results"
    fab("sync-from-runpod", "--path=lightning_logs", f"--dest={back}")
    assert list(back.rglob("events.out.tfevents.*"))
    assert list(back.rglob("*.ckpt"))

    project = "gpu-deploy-" + Path(remote_dir).name
    [container] = docker_client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
    container.kill()
    killed_at = latest_checkpoint(storage)
    assert killed_at is not None and killed_at.step

    again = fab("deploy-runpod", "--dataset=tiny", "--restart")
    assert "restart" in again.stdout
    [container] = docker_client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
    logs = wait_until(lambda: (lambda text: text if "entrypoint: running" in text else "")(
        container.logs().decode(errors="replace")), 60, "the restarted entrypoint")
    assert f"(step {killed_at.step})" in logs, logs[-2000:]

    noop = fab("deploy-runpod", "--dataset=tiny")
    assert "nothing to do" in noop.stdout

    stopped = fab("stop")
    assert "stopped" in stopped.stdout
    assert latest_checkpoint(storage).step >= killed_at.step

    secret = values["AWS_SECRET_ACCESS_KEY"]
    assert not any(secret in text or "rp-operator-only-secret" in text for text in outputs)


def test_deploy_refuses_bad_input_with_one_sentence(workspace, tmp_path: Path) -> None:
    operator, _remote_dir, values = workspace
    no_host = {k: v for k, v in values.items() if k != "RUNPOD_HOST"}
    write_dotenv(operator / ".env", no_host)
    result = run_fab("deploy-runpod", cwd=operator)
    assert result.returncode == 1 and "Missing settings: RUNPOD_HOST" in result.stderr
    assert "Traceback" not in result.stderr

    write_dotenv(operator / ".env", {**values, "RUNPOD_PORT": "1"})
    result = run_fab("deploy-runpod", cwd=operator)
    assert result.returncode == 1 and "Cannot reach 127.0.0.1:1" in result.stdout + result.stderr

    write_dotenv(operator / ".env", {**values, "IMAGE": "never-pushed:v0"})
    result = run_fab("deploy-runpod", cwd=operator)
    assert result.returncode == 1 and "push it first" in result.stderr


def test_one_run_on_two_hosts_is_refused_and_two_runs_deploy_side_by_side(
        workspace, ssh_server, tmp_path: Path, ssh_connection) -> None:
    """One run deployed to two hosts without NUM_NODES would be two writers of its checkpoints: refused in one
    sentence. Two runs (each host its own RUN_ID) deploy side by side; a task over both hosts reports each."""
    operator, remote_dir, values = workspace
    second = SshServer(tmp_path / "sshd2").start()
    try:
        # both "hosts" accept the operator's one key
        (second.workdir / "authorized_keys").write_text(Path(f"{ssh_server.client_key}.pub").read_text())
        one, two = f"127.0.0.1:{ssh_server.port}{remote_dir}-a", f"127.0.0.1:{second.port}{remote_dir}-b"
        refused = run_fab("deploy-runpod", f"--hosts={one},{two}", cwd=operator)
        assert refused.returncode == 1 and "would be 2 writers of one run's checkpoints" in refused.stderr
        assert "Traceback" not in refused.stderr
        for host, run_id in ((one, "two-hosts-a"), (two, "two-hosts-b")):
            result = run_fab("deploy-runpod", f"--hosts={host}", cwd=operator, env={"RUN_ID": run_id})
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            assert "training is running" in result.stdout

        status = run_fab("status", f"--hosts={one},{two}", cwd=operator)
        assert status.returncode == 0 and status.stdout.count("service ") == 2, status.stdout + status.stderr
        run_fab("stop", f"--hosts={one},{two}", cwd=operator)
    finally:
        second.stop()
        for suffix in ("-a", "-b"):
            project = "gpu-deploy-" + Path(remote_dir + suffix).name
            ssh_connection.run(f"docker ps -aq --filter label=com.docker.compose.project={project} "
                               "| xargs -r docker rm -f", warn=True)


def _resumed_step(container) -> str | None:
    import re

    match = re.search(r"entrypoint: .*\(step (\d+)\)", container.logs().decode(errors="replace"))
    return match.group(1) if match else None


def test_two_node_run_trains_and_resumes_as_a_group(workspace, ssh_server, tmp_path: Path, ssh_connection,
                                                    docker_client) -> None:
    from deploy.dev.embedded import free_port

    operator, remote_dir, values = workspace
    storage = storage_of(values)
    second = SshServer(tmp_path / "sshd2").start()
    dirs = (f"{remote_dir}-n0", f"{remote_dir}-n1")
    projects = ["gpu-deploy-" + Path(d).name for d in dirs]

    def containers():
        return [docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={p}"})
                for p in projects]

    try:
        (second.workdir / "authorized_keys").write_text(Path(f"{ssh_server.client_key}.pub").read_text())
        hosts = f"127.0.0.1:{ssh_server.port}{dirs[0]},127.0.0.1:{second.port}{dirs[1]}"
        group = {**values, "NUM_NODES": "2", "MASTER_PORT": str(free_port())}

        write_dotenv(operator / ".env", {**group, "MASTER_ADDR": "::1"})  # rank 0 listens on IPv4 only
        refused = run_fab("deploy-runpod", f"--hosts={hosts}", cwd=operator)
        assert refused.returncode == 1 and "cannot reach MASTER_ADDR ::1" in refused.stderr, refused.stderr
        assert containers() == [[], []]  # nothing started

        write_dotenv(operator / ".env", {**group, "MASTER_ADDR": "127.0.0.1"})
        started = run_fab("deploy-runpod", f"--hosts={hosts}", cwd=operator)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        assert started.stdout.count("training is running") == 2
        first = wait_until(lambda: latest_checkpoint(storage), 240, "a checkpoint from the group")
        later = wait_until(lambda: (lambda c: c if c and c.step > first.step else None)(latest_checkpoint(storage)),
                           120, "the global step to advance")
        assert [c[0].status for c in containers()] == ["running", "running"]
        assert later.step > first.step

        containers()[1][0].kill()  # one node dies: the group restarts together from S3
        redeployed = run_fab("deploy-runpod", f"--hosts={hosts}", cwd=operator)
        assert redeployed.returncode == 0, redeployed.stdout[-3000:] + redeployed.stderr[-3000:]
        steps = wait_until(lambda: (lambda s: s if all(s) else None)([_resumed_step(c[0]) for c in containers()]),
                           60, "both ranks to resume")
        assert steps[0] == steps[1] and int(steps[0]) >= later.step
        run_fab("stop", f"--hosts={hosts}", cwd=operator)
    finally:
        second.stop()
        for project in projects:
            ssh_connection.run(f"docker ps -aq --filter label=com.docker.compose.project={project} "
                               "| xargs -r docker rm -f", warn=True)
