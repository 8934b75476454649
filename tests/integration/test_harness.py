"""The real parts every later test stands on: sshd through Fabric, S3 over HTTP, the Docker engine."""

from __future__ import annotations

import io
from pathlib import Path

import pytest


def test_fabric_runs_a_command_on_the_ssh_host(ssh_connection) -> None:
    result = ssh_connection.run("echo hello from $(hostname)", hide=True)
    assert result.ok
    assert result.stdout.startswith("hello from ")


def test_sftp_uploads_and_downloads_a_file(ssh_connection, tmp_path: Path) -> None:
    local = tmp_path / "payload.bin"
    local.write_bytes(b"\x00\x01gpu-deploy" * 1000)
    remote = f"/tmp/gpu-deploy-test-{tmp_path.name}.bin"
    ssh_connection.put(str(local), remote)
    back = tmp_path / "back.bin"
    ssh_connection.get(remote, str(back))
    ssh_connection.run(f"rm -f {remote}", hide=True)
    assert back.read_bytes() == local.read_bytes()


def test_s3_put_list_get_over_http(s3_env: dict[str, str]) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    )
    bucket, key = s3_env["S3_BUCKET"], f"{s3_env['S3_PREFIX']}/hello.txt"
    client.upload_fileobj(io.BytesIO(b"hello"), bucket, key)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=s3_env["S3_PREFIX"])
    assert [o["Key"] for o in listed["Contents"]] == [key]
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"hello"
    assert s3_env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


@pytest.mark.docker
def test_docker_builds_and_runs_the_scratch_busybox_image(docker_client, busybox_image: str) -> None:
    output = docker_client.containers.run(busybox_image, ["sh", "-c", "echo ok; busybox | head -1"], remove=True)
    assert output.startswith(b"ok\nBusyBox v")


@pytest.mark.docker
@pytest.mark.slow
def test_training_base_image_imports_torch_and_lightning(docker_client, base_image: str) -> None:
    script = "import torch, lightning; print(torch.__version__, lightning.__version__)"
    output = docker_client.containers.run(base_image, ["python3", "-c", script], remove=True).decode()
    torch_version, lightning_version = output.split()
    assert torch_version.startswith("2.13.0")
    assert int(lightning_version.split(".")[0]) >= 2
