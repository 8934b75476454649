"""Check that the bucket is usable: endpoint, credentials and each permission the project needs.

A probe object under ``<prefix>/.gpu-deploy-check/`` is listed, written, read and deleted, and a
multipart upload is created, listed and aborted. Each step maps to one IAM action, so a failure
names exactly the permission to grant. Endpoint, bucket and credential failures stop at once: no
later step could tell anything more.

Example::

    report = check_bucket(Storage.from_settings(load_settings()))
    for step in report.steps:
        print(step.name, step.permission, step.result)
    report.raise_for_missing()
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from deploy.errors import StorageError
from deploy.storage import Storage

PROBE_FOLDER = ".gpu-deploy-check"
PROBE_BODY = b"gpu-deploy bucket check\n"

# Errors that mean "nothing else can work": report them as they are.
_FATAL_CODES = {"NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                "AuthorizationHeaderMalformed", "PermanentRedirect"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}

REQUIRED_ACTIONS = (
    "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
    "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts", "s3:ListBucketMultipartUploads",
)


@dataclass(frozen=True)
class CheckStep:
    """One probe: what was tried, the IAM action it needs, and how it went."""

    name: str
    permission: str
    ok: bool | None
    """True passed, False failed, None not tried (an earlier step it depends on failed)."""
    detail: str = ""

    @property
    def result(self) -> str:
        return {True: "ok", False: "FAILED", None: "not tried"}[self.ok] + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class CheckReport:
    endpoint: str
    bucket: str
    url: str
    steps: tuple[CheckStep, ...]

    @property
    def missing(self) -> list[str]:
        """The permissions whose step failed, in order, without repeats."""
        return list(dict.fromkeys(s.permission for s in self.steps if s.ok is False))

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def raise_for_missing(self) -> None:
        if self.missing:
            raise StorageError(
                f"The credentials lack {', '.join(self.missing)} on bucket {self.bucket!r} at {self.endpoint}; "
                "grant them (README.md has the minimal IAM policy).")


def ensure_reachable(endpoint: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds when a custom endpoint does not accept connections.

    botocore retries a refused or silent endpoint ``AWS_MAX_ATTEMPTS`` times with backoff (a minute
    or more) before it gives up; one TCP connect answers the same question at once. Skipped for AWS
    itself (no endpoint) and behind an HTTP proxy, where a direct connect proves nothing.
    """
    if not endpoint or any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return
    parts = urlparse(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise StorageError(f"Cannot reach the S3 endpoint {endpoint}; check AWS_ENDPOINT_URL and the network.") from exc


def check_bucket(storage: Storage) -> CheckReport:
    """Run every probe against ``storage``; raises :class:`StorageError` when nothing can work."""
    client, bucket = storage.client, storage.bucket
    probe = storage.key(PROBE_FOLDER, f"probe-{uuid.uuid4().hex[:12]}")
    folder = storage.key(PROBE_FOLDER) + "/"
    steps: list[CheckStep] = []

    def attempt(name: str, permission: str, call: Callable[[], Any]) -> Any:
        try:
            value = call()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _FATAL_CODES:
                raise storage.explain(exc, probe) from exc
            detail = "access denied" if code in _DENIED_CODES else f"{code or 'error'}: " + \
                str(exc.response.get("Error", {}).get("Message", "")).rstrip(".")
            steps.append(CheckStep(name, permission, False, detail))
            return None
        except BotoCoreError as exc:
            raise storage.explain(exc, probe) from exc
        steps.append(CheckStep(name, permission, True))
        return value if value is not None else True

    def skipped(name: str, permission: str, because: str) -> None:
        steps.append(CheckStep(name, permission, None, f"needs {because}"))

    attempt("list objects", "s3:ListBucket",
            lambda: client.list_objects_v2(Bucket=bucket, Prefix=folder, MaxKeys=1))
    wrote = attempt("put object", "s3:PutObject", lambda: client.put_object(
        Bucket=bucket, Key=probe, Body=PROBE_BODY,
        Metadata={"size": str(len(PROBE_BODY)), "sha256": hashlib.sha256(PROBE_BODY).hexdigest()}))

    upload = attempt("create multipart upload", "s3:PutObject",
                     lambda: client.create_multipart_upload(Bucket=bucket, Key=probe + ".multipart"))
    if upload:
        upload_id = upload["UploadId"]
        attempt("list multipart uploads", "s3:ListBucketMultipartUploads",
                lambda: client.list_multipart_uploads(Bucket=bucket, Prefix=folder))
        attempt("list parts", "s3:ListMultipartUploadParts",
                lambda: client.list_parts(Bucket=bucket, Key=probe + ".multipart", UploadId=upload_id))
        aborted = attempt("abort multipart upload", "s3:AbortMultipartUpload",
                          lambda: client.abort_multipart_upload(Bucket=bucket, Key=probe + ".multipart",
                                                                UploadId=upload_id))
        if not aborted:
            steps[-1] = CheckStep(steps[-1].name, steps[-1].permission, False,
                                  steps[-1].detail + f" (upload {upload_id} of {probe}.multipart is left open)")
    else:
        for name, permission in (("list multipart uploads", "s3:ListBucketMultipartUploads"),
                                 ("list parts", "s3:ListMultipartUploadParts"),
                                 ("abort multipart upload", "s3:AbortMultipartUpload")):
            skipped(name, permission, "a multipart upload")

    if wrote:
        def read_back() -> bool:
            body = client.get_object(Bucket=bucket, Key=probe)["Body"].read()
            if body != PROBE_BODY:
                raise StorageError(f"{storage.url(probe)} read back different bytes than were written.")
            return True

        attempt("get object", "s3:GetObject", read_back)
        attempt("delete object", "s3:DeleteObject", lambda: client.delete_object(Bucket=bucket, Key=probe))
    else:
        skipped("get object", "s3:GetObject", "the probe object")
        skipped("delete object", "s3:DeleteObject", "the probe object")
    return CheckReport(endpoint=storage.endpoint, bucket=bucket, url=storage.url(), steps=tuple(steps))
