"""Shipping the .env over real SFTP, and what compose hands a container from it."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from deploy.hosts.envfile import plan_env, render_env, ship_env
from deploy.settings import load_settings
from tests.conftest import need
from tests.unit.test_envship import ACCEPTED, keyed


def test_env_lands_with_mode_0600_and_is_not_rewritten(ssh_connection, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("S3_BUCKET=my-bucket\nAWS_SECRET_ACCESS_KEY=topsecret-123456\n")
    shipment = plan_env(load_settings(env_file=tmp_path / ".env", environ={}), environ={})
    remote_dir = f"/tmp/gpu-deploy env {uuid.uuid4().hex[:8]}"  # a space: every command quotes the path
    ssh_connection.run(shlex.join(["mkdir", "-p", remote_dir]))
    ssh_connection.sftp().open(f"{remote_dir}/.env", "w").close()
    ssh_connection.sftp().chmod(f"{remote_dir}/.env", 0o644)  # an older, world-readable file is replaced
    try:
        assert ship_env(ssh_connection, remote_dir, shipment) is True
        attrs = ssh_connection.sftp().stat(f"{remote_dir}/.env")
        assert stat.S_IMODE(attrs.st_mode) == 0o600
        with ssh_connection.sftp().open(f"{remote_dir}/.env") as handle:
            assert handle.read() == shipment.content()
        assert ship_env(ssh_connection, remote_dir, shipment) is False
        assert ssh_connection.sftp().listdir(remote_dir) == [".env"]
    finally:
        ssh_connection.run(shlex.join(["rm", "-rf", remote_dir]))


def compose_commands() -> list[list[str]]:
    """docker-compose 1.x and Compose v2, whichever this machine has."""
    found = []
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        found.append(["docker", "compose"])
    return found


@pytest.mark.docker
def test_compose_env_file_hands_every_accepted_value_to_the_container_unchanged(busybox_image: str,
                                                                                 tmp_path: Path) -> None:
    # The host's compose file reads the .env with `env_file:`; the container must see exactly what was written.
    commands = compose_commands()
    need(bool(commands), "docker-compose or docker compose")
    (tmp_path / ".env").write_text(render_env(keyed(ACCEPTED)))
    (tmp_path / "docker-compose.yml").write_text(
        f"version: '3.8'\nservices:\n  t:\n    image: {busybox_image}\n    env_file: .env\n")
    for command in commands:
        project = f"envdialect{uuid.uuid4().hex[:8]}"
        base = [*command, "-p", project, "-f", str(tmp_path / "docker-compose.yml")]
        try:
            out = subprocess.run([*base, "run", "--rm", "-T", "t", "env"], capture_output=True, text=True,
                                 timeout=120, cwd=tmp_path, env={**os.environ, "HOME": "/nowhere", "X": "nothing"})
        finally:
            subprocess.run([*base, "down"], capture_output=True, timeout=120, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        seen = dict(line.split("=", 1) for line in out.stdout.splitlines() if line.startswith("V_"))
        assert seen == keyed(ACCEPTED), command
