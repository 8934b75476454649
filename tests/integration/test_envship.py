"""Shipping the .env over real SFTP."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

from deploy.hosts.envfile import plan_env, ship_env
from deploy.settings import load_settings


def test_env_lands_with_mode_0600_and_is_not_rewritten(ssh_connection, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("S3_BUCKET=my-bucket\nAWS_SECRET_ACCESS_KEY=topsecret-123456\n")
    shipment = plan_env(load_settings(env_file=tmp_path / ".env", environ={}), environ={})
    remote_dir = f"/tmp/gpu-deploy-env-{uuid.uuid4().hex[:8]}"
    ssh_connection.run(f"mkdir -p {remote_dir}")
    try:
        assert ship_env(ssh_connection, remote_dir, shipment) is True
        attrs = ssh_connection.sftp().stat(f"{remote_dir}/.env")
        assert stat.S_IMODE(attrs.st_mode) == 0o600
        with ssh_connection.sftp().open(f"{remote_dir}/.env") as handle:
            assert handle.read() == shipment.content()
        assert ship_env(ssh_connection, remote_dir, shipment) is False
        assert ssh_connection.run(f"ls -A {remote_dir}").stdout.split() == [".env"]
    finally:
        ssh_connection.run(f"rm -rf {remote_dir}")
