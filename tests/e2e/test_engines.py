"""The operator flows on a second engine: Docker 26 with Compose v2 (Debian trixie's), beside the system's 20.10
with Compose 1.29 that the rest of the suite uses.

Images through S3 with Docker 26 on both ends (its `docker save` writes the OCI layout, 20.10's the classic
one), and the compose loop on a host whose Docker is 26: deploy, train, `fab stop` saves a checkpoint to S3, a
second deploy resumes from it. Every test checks which engine and which Compose it ran on, so a fall back to
the system's cannot pass. And the system engine still works after a second engine started and stopped.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from deploy.hosts.probe import probe
from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.storage.checkpoints import latest_checkpoint
from tests.harness.deploys import DEMO_TRAIN_COMMAND
from tests.harness.engines import DOCKER26, STATE_ROOT, Engine
from tests.harness.fab import run_fab
from tests.harness.images import build_busybox_image
from tests.harness.waiting import wait_until, write_dotenv

pytestmark = pytest.mark.docker

@pytest.fixture
def host26(engine_host26):
    conn = engine_host26.connection()
    yield conn
    conn.close()


def host_settings(server, tmp_path: Path) -> dict[str, str]:
    """The settings that name an sshd test host, as an operator's .env has them."""
    return {"RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(server.port), "RUNPOD_USER": server.user,
            "RUNPOD_SSH_KEY": str(server.client_key), "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts")}


def fab_ok(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = run_fab(*args, cwd=cwd, env=env)
    assert result.returncode == 0, f"fab {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def image_id(client, ref: str) -> str | None:
    try:
        return client.images.get(ref).id
    except Exception:  # noqa: BLE001 - not there
        return None


def test_a_docker_26_host_is_probed_as_docker_26_with_compose_v2_both_ways(host26) -> None:
    facts = probe(host26, "/tmp/gpu-deploy-nowhere")
    assert facts.docker.startswith("26."), facts.report()
    assert facts.compose_v2.startswith("2.")  # the CLI plugin, `docker compose`
    assert facts.compose_v1.startswith("2.")  # the standalone `docker-compose` on this host is v2 as well
    assert facts.compose_command == "docker compose"  # what a deploy to it runs


def test_image_to_s3_from_docker_26_loads_on_a_docker_26_host_and_on_the_system_engine(
        docker26, docker26_client, engine_host26, host26, docker_client, s3_env, tmp_path: Path) -> None:
    assert docker26_client.version()["Version"].startswith("26.")
    ref = f"gpu-deploy-test-img/{uuid.uuid4().hex[:10]}:v26"
    build_busybox_image(docker26_client, tmp_path / "ctx", tag=ref,
                        extra=f'RUN ["/bin/busybox", "sh", "-c", "echo {uuid.uuid4().hex} > /stamp"]\n')
    expected = image_id(docker26_client, ref)
    assert expected and image_id(docker_client, ref) is None  # only Docker 26 has it: the push reads its save
    operator = tmp_path / "operator"
    operator.mkdir()
    write_dotenv(operator / ".env", {**s3_env, "IMAGE": ref, **host_settings(engine_host26, tmp_path)})
    try:
        pushed = fab_ok("image-to-s3", cwd=operator, env={"DOCKER_HOST": docker26.url})  # docker.from_env()
        assert "nothing to do" not in pushed.lower()
        docker26_client.images.remove(ref, force=True)
        assert image_id(docker26_client, ref) is None

        fab_ok("image-from-s3", cwd=operator)  # over SSH into the host's engine: RUNPOD_HOST is Docker 26
        assert image_id(docker26_client, ref) == expected
        on_host = host26.run(f"docker version --format '{{{{.Server.Version}}}}' && "
                             f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(ref)}", hide=True).stdout
        assert on_host.split() == [docker26_client.version()["Version"], expected]

        fab_ok("image-from-s3", "--local", cwd=operator)  # Docker 26's layers into the system's 20.10
        assert docker_client.version()["Version"].startswith("20.10")
        assert image_id(docker_client, ref) == expected
    finally:
        for client in (docker26_client, docker_client):
            if image_id(client, ref):
                client.images.remove(ref, force=True)


def test_the_system_engine_keeps_docker0_its_rules_and_ports_while_a_second_engine_starts_and_stops(
        docker_client, busybox_image: str, tmp_path: Path) -> None:
    """A second engine of its own (the session's stops only at its end), started and stopped twice here, as the
    session's is: the second start is on its data root of the first, where dockerd once deleted docker0. A
    system container publishes a port all along, and a new one publishes after."""
    other = Engine(name="docker26-check", root=DOCKER26.root, bridge="gdtest26c", address="10.226.28.1/24",
                   state=STATE_ROOT / "docker26-check")

    def serves(port: str) -> bool:
        """busybox httpd answers on 127.0.0.1:``port`` (with any HTTP status)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def publish(client) -> tuple[object, str]:
        box = client.containers.run(busybox_image, ["httpd", "-f", "-p", "80", "-h", "/"], detach=True,
                                    ports={"80/tcp": ("127.0.0.1", None)})
        box.reload()
        port = box.ports["80/tcp"][0]["HostPort"]
        wait_until(lambda: serves(port), 20, f"httpd published on 127.0.0.1:{port}")
        return box, port

    def system_rules() -> str:
        return subprocess.run(["iptables", "-t", "nat", "-S", "DOCKER"], capture_output=True, text=True).stdout

    def docker0() -> str:
        return subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "docker0"], capture_output=True,
                              text=True).stdout

    system, port = publish(docker_client)
    try:
        assert f"--dport {port}" in system_rules() and "172.17.0.1/16" in docker0()
        for start in (1, 2):
            other.acquire(tmp_path / "dockerd.log")
            try:
                assert other.server_version().startswith("26."), f"start {start}"
                build_busybox_image(other.client(), tmp_path / "bb", tag=busybox_image)
                box, other_port = publish(other.client())  # through its docker-proxy: it has no iptables
                assert serves(port) and "172.17.0.1/16" in docker0(), f"start {start}"
                box.remove(force=True)
            finally:
                other.release()
            assert other.server_version() == ""
            assert "172.17.0.1/16" in docker0(), f"docker0 after the second engine's stop {start}"
            assert f"--dport {port}" in system_rules() and serves(port), f"stop {start}"
        assert "gdtest26c" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        fresh, _ = publish(docker_client)
        fresh.remove(force=True)
    finally:
        system.remove(force=True)


@pytest.mark.slow
def test_compose_deploy_stop_and_resume_on_a_docker_26_host(
        engine_host26, host26, docker26_client, docker_client, training_image: str, s3_server, s3_bucket: str,
        tmp_path: Path) -> None:
    remote_dir = f"/tmp/gpu-deploy-e2e26-{uuid.uuid4().hex[:8]}"
    project = "gpu-deploy-" + Path(remote_dir).name
    values = {**s3_server.environ(s3_bucket, prefix=f"e2e26-{uuid.uuid4().hex[:8]}"),
              **host_settings(engine_host26, tmp_path), "REMOTE_DIR": remote_dir, "IMAGE": training_image,
              "TRAIN_COMMAND": DEMO_TRAIN_COMMAND, "RUNTIME": "compose"}
    operator = tmp_path / "operator"
    operator.mkdir()
    write_dotenv(operator / ".env", values)
    storage = Storage.from_settings(load_settings(environ=values))
    by_project = {"label": f"com.docker.compose.project={project}"}

    def logs() -> str:
        return "".join(c.logs().decode(errors="replace") for c in docker26_client.containers.list(
            all=True, filters=by_project))

    try:
        fab_ok("image-to-s3", cwd=operator)  # from the operator's engine (the system's 20.10)
        first = fab_ok("deploy-runpod", cwd=operator)
        assert "training is running" in first
        [container] = docker26_client.containers.list(filters=by_project)
        assert docker26_client.version()["Version"].startswith("26.")
        assert container.labels["com.docker.compose.version"].startswith("2.")  # Compose v2 made it
        assert docker_client.containers.list(all=True, filters=by_project) == []  # not the system engine

        wait_until(lambda: latest_checkpoint(storage), 240, "a checkpoint in S3 from the Docker 26 host")
        stopped = fab_ok("stop", cwd=operator)
        saved = re.search(r"saved step (\d+)", stopped)
        assert saved, stopped[-2000:]
        assert latest_checkpoint(storage).step == int(saved.group(1))

        again = fab_ok("deploy-runpod", "--runtime=auto", cwd=operator)  # what the host's facts choose
        assert "training is running" in again
        assert re.search(r"runtime +compose \(the host has Docker 26\.\S+ and docker compose\)", again), again
        resumed = wait_until(lambda: re.findall(r"entrypoint: .*\(step (\d+)\)", logs()), 120,
                             "the redeployed training to resume from S3")
        assert int(resumed[-1]) == int(saved.group(1)), logs()[-3000:]
    finally:  # removed, not stopped: fab stop was tested above
        ids = [c.id for c in docker26_client.containers.list(all=True, filters=by_project)]
        for cid in ids:
            docker26_client.containers.get(cid).remove(force=True)
        host26.run(f"rm -rf {shlex.quote(remote_dir)}", warn=True, hide=True)
