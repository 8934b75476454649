"""Conditional writes against real stores: moto's server, and the proxy that makes it ignore or refuse them.

What moto (5.2.5) does with the conditions on PutObject, pinned by the first test because the
watcher's tests stand on it:

* ``If-None-Match: *`` on a key that exists: 412 PreconditionFailed; on a new key the write goes through;
* ``If-Match`` with the current ETag: the write goes through; with any other ETag: 412
  PreconditionFailed; on a key that does not exist: 404 NoSuchKey (as AWS answers), which
  ``put_json`` turns into a StorageError, not a ConditionFailed;
* ``If-None-Match`` with an ETag instead of ``*``: not checked (AWS supports only ``*`` on writes).

moto checks the condition and then writes in two steps, under no lock: it honours conditions one
request after another, but two truly simultaneous conditional writes could in principle both win.
None did in 8-way races here; still, a test should not stand on moto's atomicity.

The other stores come from tests/harness/s3proxy.py: "ignore" drops the headers from writes (the
store silently ignores them), "refuse" answers 501 NotImplemented to any write that carries them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from deploy.settings import load_settings
from deploy.storage import MB, Storage
from deploy.storage.conditions import HONOURED, IGNORED, REFUSED, UNKNOWN, probe_conditional_writes
from deploy.storage.objects import ConditionFailed, get_json, put_json
from tasks.s3 import WITHOUT_CONDITIONS
from tests.harness.fab import run_fab
from tests.harness.s3proxy import ConditionalWriteProxy, ProxiedEnv
from tests.harness.servers import S3Server

VERDICTS = {"honour": HONOURED, "ignore": IGNORED, "refuse": REFUSED}
LINES = {
    "honour": "conditional writes: honoured (If-None-Match on create, If-Match on update)",
    "ignore": ("conditional writes: NOT honoured (If-None-Match is ignored: a second create of the same key went "
               f"through; If-Match is ignored: a stale write went through); {WITHOUT_CONDITIONS}"),
    "refuse": ("conditional writes: NOT honoured (If-None-Match and If-Match are refused: the store answered "
               f"NotImplemented (HTTP 501)); {WITHOUT_CONDITIONS}"),
}


def code_of(call) -> str:
    try:
        call()
    except ClientError as exc:
        return f"{exc.response['ResponseMetadata']['HTTPStatusCode']} {exc.response['Error']['Code']}"
    return "written"


def storage_at(endpoint: str, env: dict[str, str], **config) -> Storage:
    client = boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          config=Config(retries={"max_attempts": 1}))
    return Storage(client, env["S3_BUCKET"], env["S3_PREFIX"], TransferConfig(**config) if config else None, endpoint)


def test_moto_honours_if_none_match_and_if_match_on_put_object(s3_server: S3Server, s3_env) -> None:
    client, bucket = s3_server.client(), s3_env["S3_BUCKET"]
    key = f"{s3_env['S3_PREFIX']}/moto-conditions"
    assert code_of(lambda: client.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")) == "written"
    assert code_of(lambda: client.put_object(Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*")) == \
        "412 PreconditionFailed"
    first = client.head_object(Bucket=bucket, Key=key)["ETag"]
    assert code_of(lambda: client.put_object(Bucket=bucket, Key=key, Body=b"3", IfMatch=first)) == "written"
    assert code_of(lambda: client.put_object(Bucket=bucket, Key=key, Body=b"4", IfMatch=first)) == \
        "412 PreconditionFailed"
    assert code_of(lambda: client.put_object(Bucket=bucket, Key=key + "-missing", Body=b"5", IfMatch=first)) == \
        "404 NoSuchKey"
    assert code_of(lambda: client.put_object(Bucket=bucket, Key=key, Body=b"6", IfNoneMatch=first)) == "written"
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"6"


def test_the_probe_names_each_kind_of_store_and_leaves_nothing(proxied_s3_env: ProxiedEnv) -> None:
    storage = Storage.from_settings(load_settings())
    assert storage.endpoint == proxied_s3_env.endpoint_url
    writes = probe_conditional_writes(storage)
    verdict = VERDICTS[proxied_s3_env.mode]
    assert (writes.if_none_match.verdict, writes.if_match.verdict) == (verdict, verdict)
    assert writes.left_behind == ""
    assert list(storage.list(storage.key(".gpu-deploy-check"))) == []


def test_fab_s3_check_prints_the_line_and_a_store_without_conditions_still_passes(proxied_s3_env: ProxiedEnv) -> None:
    result = run_fab("s3.check", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert LINES[proxied_s3_env.mode] in lines, result.stdout
    assert lines[-1] == "All permissions the project needs are in place."
    assert result.stderr == ""


def test_put_json_on_each_kind_of_store(proxied_s3_env: ProxiedEnv) -> None:
    """What the ledger and the watcher's state get from each store: the fallback on a refusing store
    checks before it writes; an ignoring store lets a second create and a stale write through."""
    storage = Storage.from_settings(load_settings())
    key = storage.key("runs", "r1", "watch", "state.json")
    first = put_json(storage, key, {"n": 1}, if_none_match=True)
    second = put_json(storage, key, {"n": 2}, if_match=first)
    stale_create = lambda: put_json(storage, key, {"n": 3}, if_none_match=True)  # noqa: E731
    stale_update = lambda: put_json(storage, key, {"n": 4}, if_match=first)  # noqa: E731
    if proxied_s3_env.mode == "honour":
        pytest.raises(ConditionFailed, stale_create)
        pytest.raises(ConditionFailed, stale_update)
        assert get_json(storage, key) == ({"n": 2}, second)
    elif proxied_s3_env.mode == "refuse":
        pytest.raises(ConditionFailed, stale_create)  # the head before the write finds it
        stale_update()  # If-Match becomes a plain write
        assert get_json(storage, key)[0] == {"n": 4}
    else:
        stale_create()
        stale_update()  # nothing tells the writer: only the probe can
        assert get_json(storage, key)[0] == {"n": 4}


@pytest.mark.parametrize("mode", ["pass", "ignore", "refuse"])
def test_the_proxy_streams_multipart_uploads_and_ranged_downloads_unchanged(mode: str, s3_proxy, s3_env,
                                                                             tmp_path: Path) -> None:
    storage = storage_at(s3_proxy(mode), s3_env, multipart_threshold=5 * MB, multipart_chunksize=5 * MB)
    data = os.urandom(13 * MB)
    (tmp_path / "big.bin").write_bytes(data)
    storage.upload_file(tmp_path / "big.bin", storage.key("big.bin"))
    storage.download_file(storage.key("big.bin"), tmp_path / "back.bin")
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_a_get_keeps_its_if_match_behind_a_refusing_store(s3_proxy, s3_env) -> None:
    # s3transfer sends If-Match on the ranged GETs of a multipart download: they must reach the store.
    storage = storage_at(s3_proxy("refuse"), s3_env)
    key = storage.key("etag-checked")
    etag = storage.client.put_object(Bucket=storage.bucket, Key=key, Body=b"x")["ETag"]
    assert storage.client.get_object(Bucket=storage.bucket, Key=key, IfMatch=etag)["Body"].read() == b"x"
    assert code_of(lambda: storage.client.get_object(Bucket=storage.bucket, Key=key, IfMatch='"0"')) == \
        "412 PreconditionFailed"


def test_s3_check_against_a_web_server_says_so_in_one_sentence(s3_env, tmp_path: Path) -> None:
    with ConditionalWriteProxy("http://127.0.0.1:9", "html") as web:  # answers every request itself
        endpoint = web.endpoint_url
        # botocore retries the 500 it makes of an unreadable 200 (about a minute with the default 10 attempts)
        result = run_fab("s3.check", env={"AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1"}, timeout=120)
        probed = probe_conditional_writes(storage_at(endpoint, s3_env))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error: {endpoint} is not an S3 API: it answered with a web page (HTML) to list "
                                     "objects; check AWS_ENDPOINT_URL (from the environment): it must be the S3 API "
                                     "endpoint, not a web page or a login in front of one.")
    assert probed.if_none_match.verdict == UNKNOWN == probed.if_match.verdict
    assert probed.describe() == ("conditional writes: unknown (If-None-Match and If-Match unknown: a create of a "
                                 "new key was answered an HTML page, not an S3 answer (is AWS_ENDPOINT_URL the S3 "
                                 "API endpoint?))")


# ----------------------------------------------------------------------------- signatures

AUTH_BUCKET = "signature-checked-bucket"


@pytest.fixture(scope="module")
def checking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, dict[str, str]]]:
    """A private moto server with authentication on (see test_s3_auth.py), and a user's keys."""
    pytest.importorskip("moto.server")
    server = S3Server(tmp_path_factory.mktemp("moto-signatures")).start()
    try:
        server.client().create_bucket(Bucket=AUTH_BUCKET)
        iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name=server.region,
                           aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key)
        iam.create_user(UserName="writer")
        iam.put_user_policy(UserName="writer", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*",
                           "Resource": [f"arn:aws:s3:::{AUTH_BUCKET}", f"arn:aws:s3:::{AUTH_BUCKET}/*"]}]}))
        key = iam.create_access_key(UserName="writer")["AccessKey"]
        request = urllib.request.Request(f"{server.endpoint_url}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        yield server, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                       "AWS_DEFAULT_REGION": server.region, "S3_BUCKET": AUTH_BUCKET, "S3_PREFIX": "p"}
    finally:
        server.stop()


def test_dropping_a_signed_header_breaks_the_signature_only_where_the_server_checks_it(checking_server) -> None:
    """Why "ignore" mode works against the session's server: botocore signs If-Match and If-None-Match,
    and only a server with authentication on notices one is missing."""
    server, env = checking_server
    with ConditionalWriteProxy(server.endpoint_url, "pass") as passing, \
            ConditionalWriteProxy(server.endpoint_url, "ignore") as ignoring:
        through = storage_at(passing.endpoint_url, env).client
        dropped = storage_at(ignoring.endpoint_url, env).client
        assert code_of(lambda: through.put_object(Bucket=AUTH_BUCKET, Key="p/a", Body=b"1", IfNoneMatch="*")) == \
            "written"
        assert code_of(lambda: dropped.put_object(Bucket=AUTH_BUCKET, Key="p/b", Body=b"1")) == "written"
        assert code_of(lambda: dropped.put_object(Bucket=AUTH_BUCKET, Key="p/c", Body=b"1", IfNoneMatch="*")) == \
            "403 SignatureDoesNotMatch"


def test_fab_s3_check_through_a_refusing_proxy_is_fine_with_authentication_on(checking_server) -> None:
    # "refuse" never forwards a conditional write, so every signature that reaches the server holds.
    server, env = checking_server
    with ConditionalWriteProxy(server.endpoint_url, "refuse") as refusing:
        result: subprocess.CompletedProcess[str] = run_fab(
            "s3.check", env={**env, "AWS_ENDPOINT_URL": refusing.endpoint_url, "AWS_MAX_ATTEMPTS": "1"}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert LINES["refuse"] in result.stdout.splitlines()
