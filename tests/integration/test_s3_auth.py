"""Wrong credentials and missing permissions, against a private moto server that checks them.

The session's S3 server accepts any key (moto's default). This module starts its own server, creates
an IAM user with a policy that lacks two actions, then switches authentication on through moto's
``/moto-api/reset-auth`` (the runtime form of ``INITIAL_NO_AUTH_ACTION_COUNT``): from then on every
request is signed-checked and authorized against IAM.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.harness.fab import run_fab
from tests.harness.servers import S3Server
BUCKET = "auth-checked-bucket"
GRANTED = ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:ListMultipartUploadParts",
           "s3:ListBucketMultipartUploads"]  # no s3:DeleteObject, no s3:AbortMultipartUpload


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, dict[str, str]]]:
    pytest.importorskip("moto.server")
    server = S3Server(tmp_path_factory.mktemp("moto-auth")).start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name=server.region,
                           aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key)
        iam.create_user(UserName="limited")
        iam.put_user_policy(UserName="limited", PolicyName="most-of-s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": GRANTED,
                           "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}))
        key = iam.create_access_key(UserName="limited")["AccessKey"]
        request = urllib.request.Request(f"{server.endpoint_url}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        yield server, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        server.stop()


def fab(server: S3Server, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"GPU_DEPLOY_CACHE_DIR": str(Path.cwd() / "cache"), "AWS_ENDPOINT_URL": server.endpoint_url, "AWS_DEFAULT_REGION": server.region,
            "S3_BUCKET": BUCKET, "S3_PREFIX": "p", "AWS_MAX_ATTEMPTS": "1", **env}
    return run_fab(*args, env=full, timeout=120)


def test_unknown_access_key_is_named(auth_server) -> None:
    server, _ = auth_server
    result = fab(server, "s3.checkpoints", AWS_ACCESS_KEY_ID="NOT-A-REAL-ACCESS-KEY",
                 AWS_SECRET_ACCESS_KEY="not-the-secret-9f8e7d")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error: The access key is not known to {server.endpoint_url}; "
                                     "check AWS_ACCESS_KEY_ID (from the environment).")
    assert "not-the-secret-9f8e7d" not in result.stdout + result.stderr


def test_wrong_secret_is_named_and_never_shown(auth_server, tmp_path: Path) -> None:
    server, creds = auth_server
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("a")
    result = fab(server, "s3.upload-dataset", "--path", str(tmp_path / "ds"),
                 AWS_ACCESS_KEY_ID=creds["AWS_ACCESS_KEY_ID"], AWS_SECRET_ACCESS_KEY="wrong-secret-1a2b3c4d")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error: {server.endpoint_url} rejected the request signature; check "
                                     "AWS_SECRET_ACCESS_KEY (from the environment) and, for your provider, "
                                     "AWS_DEFAULT_REGION (from the environment).")
    assert "wrong-secret-1a2b3c4d" not in result.stdout + result.stderr


def test_wrong_secret_on_a_single_object_head_is_not_called_a_permission_problem(auth_server) -> None:
    server, creds = auth_server
    result = fab(server, "s3.download-checkpoint", "--name", "epoch=1-step=10.ckpt",
                 AWS_ACCESS_KEY_ID=creds["AWS_ACCESS_KEY_ID"], AWS_SECRET_ACCESS_KEY="wrong-secret-1a2b3c4d")
    assert result.returncode == 1
    assert "rejected the request signature; check AWS_SECRET_ACCESS_KEY" in result.stderr


def test_check_names_exactly_the_missing_permissions(auth_server) -> None:
    server, creds = auth_server
    result = fab(server, "s3.check", **creds)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"Error: The credentials lack s3:AbortMultipartUpload, s3:DeleteObject on bucket '{BUCKET}' at "
        f"{server.endpoint_url}; grant them (docs/s3.md has the minimal IAM policy).")
    rows = result.stdout.splitlines()
    assert any("put object" in row and "s3:PutObject" in row and row.rstrip().endswith("ok") for row in rows)
    assert any("delete object" in row and "s3:DeleteObject" in row and row.rstrip().endswith("FAILED: access denied")
               for row in rows)
    assert any("abort multipart upload" in row and "FAILED: access denied" in row for row in rows)
    assert creds["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr
