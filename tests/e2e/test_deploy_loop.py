"""The whole operator loop over real SSH, a real S3 server and the real Docker engine.

image-to-s3 -> dataset to the bucket -> deploy-runpod -> training in the container, checkpoints in
S3 -> sync-from-runpod -> the container killed -> deploy-runpod --restart resumes from S3 -> a second
deploy changes nothing -> stop. The probe finds no GPU here, so the service runs without a GPU
reservation, as it would for a CPU-only user.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from deploy.storage.checkpoints import latest_checkpoint, list_checkpoints
from tests.harness.deploys import storage_of
from tests.harness.waiting import write_dotenv, wait_until
from tests.harness.fab import run_fab
from tests.harness.servers import SshServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

def test_deploy_train_sync_kill_resume(compose_workspace, ssh_connection, docker_client) -> None:
    operator, remote_dir, values = compose_workspace
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
    # The kill may land while a newer step is staged but not yet sent: the restart sends it first and
    # resumes there. Either way no step is lost: the resumed step is in S3 and not older than the kill's.
    resumed = re.search(r"entrypoint: resuming from .*\(step (\d+)\)", logs)
    assert resumed and int(resumed.group(1)) >= killed_at.step, logs[-2000:]
    assert any(c.step == int(resumed.group(1)) for c in list_checkpoints(storage)), logs[-2000:]

    noop = fab("deploy-runpod", "--dataset=tiny")
    assert "nothing to do" in noop.stdout

    stopped = fab("stop")
    assert "stopped" in stopped.stdout
    assert latest_checkpoint(storage).step >= killed_at.step

    secret = values["AWS_SECRET_ACCESS_KEY"]
    assert not any(secret in text or "rp-operator-only-secret" in text for text in outputs)


def test_deploy_refuses_bad_input_with_one_sentence(compose_workspace, tmp_path: Path) -> None:
    operator, _remote_dir, values = compose_workspace
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
        compose_workspace, ssh_server, tmp_path: Path, ssh_connection) -> None:
    """One run deployed to two hosts without NUM_NODES would be two writers of its checkpoints: refused in one
    sentence. Two runs (each host its own RUN_ID) deploy side by side; a task over both hosts reports each."""
    operator, remote_dir, values = compose_workspace
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


def test_two_node_run_trains_and_resumes_as_a_group(compose_workspace, ssh_server, tmp_path: Path, ssh_connection,
                                                    docker_client) -> None:
    from deploy.dev.embedded import free_port

    operator, remote_dir, values = compose_workspace
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
