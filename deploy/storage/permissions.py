"""Check that the bucket is usable: endpoint, credentials and each permission the project needs.

A probe object under ``<prefix>/.gpu-deploy-check/`` is listed, written, read and deleted, and a
multipart upload is created, listed and aborted. Each step maps to one IAM action, so a failure
names exactly the permission to grant. Endpoint, bucket and credential failures stop at once: no
later step could tell anything more; so does an endpoint that does not answer like S3 (a web page,
a reply without the fields S3 always sends). When the probe object could be written, the report
also says whether the store honours conditional writes (:mod:`deploy.storage.conditions`).

Example::

    report = check_bucket(Storage.from_settings(load_settings()))
    for step in report.steps:
        print(step.name, step.permission, step.result)
    report.raise_for_missing()
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from deploy.errors import StorageError
from deploy.storage.bucket import CHECKS, Storage, not_s3
from deploy.storage.conditions import ConditionalWrites, probe_conditional_writes

PROBE_FOLDER = CHECKS
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
    conditional_writes: ConditionalWrites | None = None
    """None when the probe object could not be written (then neither could the conditional probe's)."""

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
                "grant them (docs/s3.md has the minimal IAM policy).")


class _Probe:
    """Runs the probe steps against one bucket and records each as a :class:`CheckStep`."""

    def __init__(self, storage: Storage) -> None:
        self.storage, self.client, self.bucket = storage, storage.client, storage.bucket
        self.key = storage.key(PROBE_FOLDER, f"probe-{uuid.uuid4().hex[:12]}")
        self.folder = storage.key(PROBE_FOLDER) + "/"
        self.steps: list[CheckStep] = []

    def attempt(self, name: str, permission: str, call: Callable[[], Any]) -> Any:
        """Run ``call``; a denied or failed step is recorded, a fatal one (no bucket, bad keys) raised."""
        try:
            value = call()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            problem = not_s3(exc.response)  # a page botocore could not read (it calls that a 500), a bare 401
            if problem:
                raise self.storage.not_s3(f"{problem} to {name}") from exc
            if code in _FATAL_CODES:
                raise self.storage.explain(exc, self.key) from exc
            detail = "access denied" if code in _DENIED_CODES else f"{code or 'error'}: " + \
                str(exc.response.get("Error", {}).get("Message", "")).rstrip(".")
            self.steps.append(CheckStep(name, permission, False, detail))
            return None
        except (BotoCoreError, ResponseParserError) as exc:  # the parser's error is not a BotoCoreError
            raise self.storage.explain(exc, self.key) from exc
        if isinstance(value, dict) and not_s3(value):
            raise self.storage.not_s3(f"{not_s3(value)} to {name}")
        self.steps.append(CheckStep(name, permission, True))
        return value if value is not None else True

    def skipped(self, name: str, permission: str, because: str) -> None:
        self.steps.append(CheckStep(name, permission, None, f"needs {because}"))

    def write(self) -> bool:
        return bool(self.attempt("put object", "s3:PutObject", lambda: self.client.put_object(
            Bucket=self.bucket, Key=self.key, Body=PROBE_BODY,
            Metadata={"size": str(len(PROBE_BODY)), "sha256": hashlib.sha256(PROBE_BODY).hexdigest()})))

    def multipart(self) -> None:
        """Create, list and abort a multipart upload (what an interrupted upload's cleanup needs)."""
        client, bucket, key = self.client, self.bucket, self.key + ".multipart"
        upload = self.attempt("create multipart upload", "s3:PutObject",
                              lambda: client.create_multipart_upload(Bucket=bucket, Key=key))
        if not upload:
            for name, permission in (("list multipart uploads", "s3:ListBucketMultipartUploads"),
                                     ("list parts", "s3:ListMultipartUploadParts"),
                                     ("abort multipart upload", "s3:AbortMultipartUpload")):
                self.skipped(name, permission, "a multipart upload")
            return
        upload_id = upload.get("UploadId") if isinstance(upload, dict) else None
        if not upload_id:  # a 200 with an empty or foreign body parses as an empty answer
            raise self.storage.not_s3("a reply to create multipart upload without the UploadId S3 always sends")
        self.attempt("list multipart uploads", "s3:ListBucketMultipartUploads",
                     lambda: client.list_multipart_uploads(Bucket=bucket, Prefix=self.folder))
        self.attempt("list parts", "s3:ListMultipartUploadParts",
                     lambda: client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id))
        aborted = self.attempt("abort multipart upload", "s3:AbortMultipartUpload",
                               lambda: client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
        if not aborted:
            last = self.steps[-1]
            self.steps[-1] = CheckStep(last.name, last.permission, False,
                                       last.detail + f" (upload {upload_id} of {key} is left open)")

    def read_and_delete(self, wrote: bool) -> None:
        if not wrote:
            self.skipped("get object", "s3:GetObject", "the probe object")
            self.skipped("delete object", "s3:DeleteObject", "the probe object")
            return

        def read_back() -> bool:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
            if body != PROBE_BODY:
                raise StorageError(f"{self.storage.url(self.key)} read back different bytes than were written.")
            return True

        self.attempt("get object", "s3:GetObject", read_back)
        self.attempt("delete object", "s3:DeleteObject",
                     lambda: self.client.delete_object(Bucket=self.bucket, Key=self.key))


def check_bucket(storage: Storage) -> CheckReport:
    """Run every probe against ``storage``; raises :class:`StorageError` when nothing can work."""
    probe = _Probe(storage)
    probe.attempt("list objects", "s3:ListBucket",
                  lambda: probe.client.list_objects_v2(Bucket=probe.bucket, Prefix=probe.folder, MaxKeys=1))
    wrote = probe.write()
    probe.multipart()
    probe.read_and_delete(wrote)
    return CheckReport(endpoint=storage.endpoint, bucket=storage.bucket, url=storage.url(), steps=tuple(probe.steps),
                       conditional_writes=probe_conditional_writes(storage) if wrote else None)
