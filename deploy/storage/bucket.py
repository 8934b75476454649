"""The bucket: an S3 client built from settings, the key layout, and verified transfers.

Everything that touches S3 goes through :class:`Storage`. Transfers use boto3's transfer manager
(s3transfer): concurrent multipart uploads and ranged downloads, streams for non-seekable input.
Objects this project writes carry ``sha256`` and ``size`` metadata so they can be checked later;
objects written by older scripts (no metadata) still work.

Example::

    storage = Storage.from_settings(load_settings())
    storage.upload_file("last.ckpt", storage.key("checkpoints", "last.ckpt"))
    for obj in storage.list(storage.key("checkpoints") + "/"):
        print(obj.key, obj.size)
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.parsers import ResponseParserError

from deploy.errors import StorageError
from deploy.reach import why
from deploy.settings import Settings
from deploy.storage.retry import Patience, RetryPolicy, for_control, for_transfers

MB = 1024 * 1024
CHUNK = 8 * MB

# Folders of the bucket layout, under s3://$S3_BUCKET/$S3_PREFIX/ (as older scripts wrote them).
CHECKPOINTS = "checkpoints"
LOGS = "logs"
DATASETS = "datasets"
IMAGES = "docker-images"
WHEELS = "wheels"  # the native runtime's wheel store (deploy.runtimes.native.wheels); newer than the scripts
CHECKS = ".gpu-deploy-check"
"""Throwaway probe objects of ``fab s3.check`` and the conditional-write probe; each is deleted afterwards."""

Progress = Callable[[int], None]
"""An observer called with the number of bytes just moved (s3transfer's subscriber shape)."""


def _no_progress(_: int) -> None:
    pass


@dataclass(frozen=True)
class ObjectInfo:
    """One object in the bucket, as listed or headed."""

    key: str
    size: int
    last_modified: datetime | None = None
    etag: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def sha256(self) -> str | None:
        return self.metadata.get("sha256")


@dataclass(frozen=True)
class TransferResult:
    """What one transfer did."""

    key: str
    path: str
    bytes: int
    seconds: float
    sha256: str | None = None
    skipped: bool = False


def make_client(settings: Settings, max_pool_connections: int | None = None, patience: Patience | None = None):
    """A boto3 S3 client for the endpoint, region, credentials and retry policy in ``settings``.

    ``patience`` (a task's clients, :mod:`deploy.storage.retry`): its timeouts, and our retries, bounded
    by its deadline and announced on stderr. Without it (the training side, the watcher), botocore retries
    ``AWS_MAX_ATTEMPTS`` times in ``AWS_RETRY_MODE`` with a 10 s connect and a 60 s read timeout.
    """
    attempts = settings.aws_max_attempts if patience is None else 1  # 1: botocore leaves the retrying to us
    config = BotoConfig(
        region_name=settings.aws_default_region,
        retries={"total_max_attempts": attempts, "mode": settings.aws_retry_mode},
        s3={"addressing_style": settings.s3_addressing_style},
        max_pool_connections=max_pool_connections or max(10, settings.aws_s3_max_concurrency + 4),
        connect_timeout=10 if patience is None else patience.connect_timeout,
        read_timeout=60 if patience is None else patience.read_timeout,
        # Many S3-compatible stores (MinIO releases, Timeweb) reject the newer default checksums.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    key_id = settings.aws_access_key_id.reveal() if settings.aws_access_key_id else None
    secret = settings.aws_secret_access_key.reveal() if settings.aws_secret_access_key else None
    client = boto3.session.Session().client(
        "s3", endpoint_url=settings.aws_endpoint_url, aws_access_key_id=key_id,
        aws_secret_access_key=secret, config=config,
    )
    if patience is not None:
        host, port = address(client.meta.endpoint_url)
        RetryPolicy(settings.aws_max_attempts, patience, host, port).register(client)
    return client


def address(url: str) -> tuple[str, int]:
    """(host, port) of an endpoint URL: ``address("http://127.0.0.1:9000") == ("127.0.0.1", 9000)``."""
    parts = urlparse(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def transfer_config(settings: Settings, multipart_threshold: int | None = None,
                    multipart_chunksize: int | None = None) -> TransferConfig:
    """Concurrency from AWS_S3_MAX_CONCURRENCY; multipart sizes from S3_MULTIPART_*_MB (or the arguments)."""
    return TransferConfig(
        multipart_threshold=multipart_threshold or settings.s3_multipart_threshold_mb * MB,
        multipart_chunksize=multipart_chunksize or settings.s3_multipart_chunksize_mb * MB,
        max_concurrency=settings.aws_s3_max_concurrency,
        use_threads=True,
    )


def hash_file(path: str | os.PathLike[str], md5: bool = False) -> tuple[str, str | None]:
    """sha256 (and md5 when asked) of a file in one pass, read in chunks (checkpoints are gigabytes);
    hashlib releases the GIL, so threads help."""
    sha = hashlib.sha256()
    digest_md5 = hashlib.md5(usedforsecurity=False) if md5 else None
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            sha.update(chunk)
            if digest_md5 is not None:
                digest_md5.update(chunk)
    return sha.hexdigest(), (digest_md5.hexdigest() if digest_md5 is not None else None)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file: ``file_sha256("last.ckpt") == hash_file("last.ckpt")[0]``."""
    return hash_file(path)[0]


def verify_download(url: str, path: str | os.PathLike[str], size: int, sha256: str | None = None,
                    md5: str | None = None, need_sha256: bool = False) -> tuple[str | None, str | None]:
    """Check a downloaded temp file before it is renamed into place: its size, then its sha256
    (the object's metadata) or md5 (a single-part ETag) when expected.

    Returns the file's ``(sha256, md5)`` as far as they were computed (sha256 when expected or
    ``need_sha256``, md5 when expected); raises :class:`StorageError` naming ``url`` otherwise.
    """
    got = os.path.getsize(path)
    if got != size:
        raise StorageError(f"{url} arrived truncated: {got} of {size} bytes.")
    if not (sha256 or md5 or need_sha256):
        return None, None
    sha, digest_md5 = hash_file(path, md5=md5 is not None)
    if sha256 and sha != sha256:
        raise StorageError(f"{url} is corrupt: sha256 {sha} does not match its metadata {sha256}.")
    if md5 is not None and digest_md5 != md5:
        raise StorageError(f"{url} is corrupt: md5 {digest_md5} does not match its ETag {md5}.")
    return sha, digest_md5


def answered_html(response: Mapping[str, Any]) -> bool:
    """True when an API call (not a GET of an object) "succeeded" with an HTML page: a web server, not
    an S3 API, is at the endpoint.

    botocore reads a well-formed page as an empty S3 answer, so the call looks fine but every field
    is missing. S3 answers with XML or an empty body; an empty body may be labelled ``text/html``
    (moto's server does), so only a page with content counts.
    """
    meta = response.get("ResponseMetadata") or {}
    headers = meta.get("HTTPHeaders") or {}
    return ("html" in str(headers.get("content-type", "")).lower() and meta.get("HTTPStatusCode") != 204
            and str(headers.get("content-length", "")).strip() != "0")


def not_s3(response: Mapping[str, Any], fields: tuple[str, ...] = ()) -> str | None:
    """What an answer was, when it was not S3's (``a web page (HTML)``); None when it looks like S3's.

    ``response`` is a call's result or a ClientError's ``response``; ``fields`` are what that call's
    answer always carries when S3 sends it (``Name`` for a listing, ``ETag`` for a head): botocore reads a
    well-formed page as an empty answer, so a missing field is how a 200 from a web server shows. An
    error S3 did not describe in its XML (botocore names it by its status, ``401``) from a server
    that sends no ``x-amz-*`` header came from something else: a web server, or a login in front.
    """
    if answered_html(response):
        return "a web page (HTML)"
    meta = response.get("ResponseMetadata") or {}
    headers = meta.get("HTTPHeaders") or {}
    status = meta.get("HTTPStatusCode")
    code = str((response.get("Error") or {}).get("Code") or "")
    if "Error" in response:
        if code and code == str(status) and not any(str(h).lower().startswith("x-amz") for h in headers):
            return f"HTTP {status} without S3's error XML or headers"
        return None
    if fields and not any(f in response for f in fields):
        return "a reply without the fields S3 always sends"
    return None


S3_ERRORS = (ClientError, BotoCoreError, ResponseParserError)
"""What a botocore call raises about the store (ResponseParserError, for a reply that is not XML, is not a
BotoCoreError)."""


def safe_relative(path: str) -> str:
    """Refuse keys and paths that climb out (``..``), are absolute (``/x``, ``\\x``) or carry control
    characters (NUL included); return the normal form. Bucket keys and names a host sends are untrusted."""
    slashed = path.replace("\\", "/")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise StorageError(f"The path {path!r} holds a control character; rename it.")
    if slashed.startswith("/") or any(part == ".." for part in slashed.split("/")):
        raise StorageError(f"The path {path!r} leaves its folder (absolute or '..'); use a relative path inside it.")
    normal = posixpath.normpath(slashed)
    return "" if normal == "." else normal


class Storage:
    """The bucket under a prefix, with verified, atomic transfers.

    Collaborators are passed in (a boto3 client, a TransferConfig) so tests hand in the real thing
    pointed at a local S3 server.
    """

    def __init__(self, client, bucket: str, prefix: str = "", config: TransferConfig | None = None,
                 endpoint: str | None = None, transfer_client=None, fixes: Mapping[str, str] | None = None) -> None:
        self.client = client
        self.transfer_client = transfer_client or client
        """Moves files and large objects (uploads, downloads, copies): a task gives it more time per answer."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.config = config or TransferConfig()
        self.endpoint = endpoint or "AWS S3"
        self.fixes = dict(fixes or {})
        """What to check for a setting, with where it came from: ``S3_BUCKET (from the --bucket flag)``."""

    @classmethod
    def from_settings(cls, settings: Settings, interactive: bool = False) -> "Storage":
        """The bucket of ``settings``. ``interactive`` (fab's tasks): a client for calls that are answered at
        once and one for transfers, each with its timeouts and announced retries up to a deadline
        (:mod:`deploy.storage.retry`); otherwise one client with botocore's own, longer patience."""
        settings.require("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET")
        assert settings.s3_bucket is not None
        fixes = {key: settings.check(key) for key in ("AWS_ENDPOINT_URL", "S3_BUCKET", "S3_PREFIX", "AWS_ACCESS_KEY_ID",
                                                     "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        if not interactive:
            return cls(make_client(settings), settings.s3_bucket, settings.s3_prefix, transfer_config(settings),
                       settings.aws_endpoint_url, fixes=fixes)
        timeout = settings.connect_timeout_seconds
        return cls(make_client(settings, patience=for_control(timeout)), settings.s3_bucket, settings.s3_prefix,
                   transfer_config(settings), settings.aws_endpoint_url,
                   transfer_client=make_client(settings, patience=for_transfers(timeout)), fixes=fixes)

    def fix(self, key: str) -> str:
        """``key`` and where its value came from, when known: what a sentence tells the user to check."""
        return self.fixes.get(key, key)

    def __repr__(self) -> str:
        return f"Storage({self.url()!r}, endpoint={self.endpoint!r})"

    # ----------------------------------------------------------------- naming

    def key(self, *parts: str) -> str:
        """The object key for layout ``parts`` under the prefix: ``key("checkpoints", "last.ckpt")``."""
        clean = [safe_relative(p) for p in parts if p]
        return "/".join(p for p in (self.prefix, *clean) if p)

    def relative(self, key: str) -> str:
        """``key`` without the prefix."""
        return key[len(self.prefix) + 1:] if self.prefix and key.startswith(self.prefix + "/") else key

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key or self.prefix}".rstrip("/")

    # ----------------------------------------------------------------- errors

    def explain(self, exc: Exception, key: str | None = None, transfer: bool = False) -> StorageError:
        """Turn a botocore error into one sentence naming the bucket, endpoint or key to check (``transfer``:
        the error came from the transfer client, whose timeouts the sentence then names)."""
        where = f"bucket {self.bucket!r} at {self.endpoint}"
        if isinstance(exc, ClientError):
            problem = not_s3(exc.response)
            if problem:
                return self.not_s3(problem)
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket",):
                return StorageError(f"The bucket {self.bucket!r} does not exist at {self.endpoint}; check "
                                    f"{self.fix('S3_BUCKET')}.")
            if code in ("InvalidAccessKeyId",):
                return StorageError(f"The access key is not known to {self.endpoint}; check "
                                    f"{self.fix('AWS_ACCESS_KEY_ID')}.")
            if code in ("SignatureDoesNotMatch",):
                return StorageError(
                    f"{self.endpoint} rejected the request signature; check {self.fix('AWS_SECRET_ACCESS_KEY')} "
                    f"and, for your provider, {self.fix('AWS_DEFAULT_REGION')}.")
            if code in ("AccessDenied", "403", "Forbidden"):
                return StorageError(f"Access denied to {where}" + (f" for {key}" if key else "") +
                                    "; check the key's permissions (docs/s3.md has the minimal IAM policy).")
            if code in ("NoSuchKey", "404", "NotFound"):
                return StorageError(f"No object {self.url(key or '')} in {where}.")
            message = str(exc.response.get("Error", {}).get("Message") or "").strip().rstrip(".")
            return StorageError(f"S3 error {code or 'unknown'} on {where}" + (f" for {key}" if key else "")
                                + (f": {message}" if message else "") + ".")
        if isinstance(exc, ResponseParserError):  # its message quotes the whole reply
            return self.not_s3("a reply that is not S3's XML")
        if isinstance(exc, (BotoConnectionError, HTTPClientError)):
            return self.unreachable(exc, self.transfer_client if transfer else self.client)
        if isinstance(exc, BotoCoreError):
            return StorageError(f"S3 request to {self.endpoint} failed: {exc}")
        return StorageError(str(exc))

    def not_s3(self, what: str) -> StorageError:
        """The one sentence for an endpoint that answers, but not as S3 does (``what`` it answered with)."""
        return StorageError(f"{self.endpoint} is not an S3 API: it answered with {what}; check "
                            f"{self.fix('AWS_ENDPOINT_URL')}: it must be the S3 API endpoint, not a web page or a "
                            "login in front of one.")

    def unreachable(self, exc: BaseException, client: Any = None) -> StorageError:
        """The one sentence for an endpoint that did not answer: why, in words, and the setting to check."""
        config = (client or self.client).meta.config
        host, port = address(self.client.meta.endpoint_url)
        reason = why(exc, host, port, config.connect_timeout, config.read_timeout)
        return StorageError(f"Cannot reach the S3 endpoint {self.endpoint}: {reason}; check "
                            f"{self.fix('AWS_ENDPOINT_URL')} and the network.")

    def reach(self, timeout: float, signed: bool = True) -> None:
        """Fail in seconds, in one sentence, unless the endpoint answers as S3 does.

        A TCP connect first (``timeout`` s; skipped behind an HTTP proxy, where it proves nothing), then,
        with ``signed``, one listing of a single key under the prefix: it proves the endpoint, the bucket,
        the keys and that the answer is S3's, before a task starts its work.
        """
        host, port = address(self.client.meta.endpoint_url)
        if not any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
            try:
                socket.create_connection((host, port), timeout=timeout).close()
            except OSError as exc:
                host_port = StorageError(f"Cannot reach the S3 endpoint {self.endpoint}: "
                                         f"{why(exc, host, port, timeout)}; check {self.fix('AWS_ENDPOINT_URL')}.")
                raise host_port from None
        if not signed:
            return
        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key() + "/" if self.prefix else "",
                                               MaxKeys=1)
        except S3_ERRORS as exc:
            raise self.explain(exc) from None
        problem = not_s3(page, ("Name", "IsTruncated", "KeyCount"))
        if problem:
            raise self.not_s3(problem)

    # ----------------------------------------------------------------- queries

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and metadata, or None when it does not exist."""
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound") \
                    and not not_s3(exc.response):
                return None
            raise self.explain(exc, key) from exc
        except S3_ERRORS as exc:
            raise self.explain(exc, key) from exc
        problem = not_s3(resp, ("ETag",))  # a web server "has" every key: it answers a HEAD with its page
        if problem:
            raise self.not_s3(problem)
        return ObjectInfo(key=key, size=resp["ContentLength"], last_modified=resp.get("LastModified"),
                          etag=resp.get("ETag", "").strip('"'), metadata=resp.get("Metadata", {}))

    def list(self, prefix: str, with_metadata: bool = False) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (a full key prefix); ``with_metadata`` heads each one."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                problem = not_s3(page, ("Name", "IsTruncated", "KeyCount"))  # never an empty listing of a web page
                if problem:
                    raise self.not_s3(problem)
                for obj in page.get("Contents", []):
                    info = ObjectInfo(key=obj["Key"], size=obj["Size"], last_modified=obj.get("LastModified"),
                                      etag=obj.get("ETag", "").strip('"'))
                    if with_metadata:
                        info = self.head(obj["Key"]) or info
                    yield info
        except S3_ERRORS as exc:
            raise self.explain(exc, prefix) from exc

    # ----------------------------------------------------------------- transfers

    def upload_file(self, path: str | os.PathLike[str], key: str, metadata: Mapping[str, str] | None = None,
                    progress: Progress = _no_progress, sha256: str | None = None) -> TransferResult:
        """Upload a file with ``size`` and ``sha256`` metadata (plus ``metadata``)."""
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"The local file {path} does not exist.")
        started = time.monotonic()
        size = path.stat().st_size
        digest = sha256 or file_sha256(path)
        meta = {"size": str(size), "sha256": digest, **{k: str(v) for k, v in (metadata or {}).items()}}
        try:
            self.transfer_client.upload_file(str(path), self.bucket, key, ExtraArgs={"Metadata": meta},
                                             Config=self.config, Callback=progress)
        except S3_ERRORS as exc:
            raise self.explain(exc, key, transfer=True) from exc
        except boto3.exceptions.S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            raise (self.explain(cause, key, transfer=True) if isinstance(cause, Exception)
                   else StorageError(str(exc))) from exc
        return TransferResult(key=key, path=str(path), bytes=size, seconds=time.monotonic() - started, sha256=digest)

    def upload_stream(self, stream: IO[bytes], key: str, metadata: Mapping[str, str] | None = None,
                      progress: Progress = _no_progress, config: TransferConfig | None = None) -> TransferResult:
        """Upload a non-seekable stream as concurrent multipart parts; memory stays bounded."""
        started = time.monotonic()
        moved = 0

        def counted(n: int) -> None:
            nonlocal moved
            moved += n
            progress(n)

        try:
            self.transfer_client.upload_fileobj(stream, self.bucket, key, ExtraArgs={"Metadata": dict(metadata or {})},
                                                Config=config or self.config, Callback=counted)
        except S3_ERRORS as exc:
            raise self.explain(exc, key, transfer=True) from exc
        return TransferResult(key=key, path="-", bytes=moved, seconds=time.monotonic() - started)

    def download_file(self, key: str, dest: str | os.PathLike[str], progress: Progress = _no_progress,
                      verify: bool = True) -> TransferResult:
        """Download into a temp file beside ``dest``, verify size and sha256 (when known), then rename.

        An interrupted or corrupt download never leaves a file at ``dest``.
        """
        info = self.head(key)
        if info is None:
            raise StorageError(f"No object {self.url(key)} at {self.endpoint}.")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        try:
            try:
                self.transfer_client.download_file(self.bucket, key, tmp, Config=self.config, Callback=progress)
            except S3_ERRORS as exc:
                raise self.explain(exc, key, transfer=True) from exc
            digest, _ = verify_download(self.url(key), tmp, info.size, info.sha256 if verify else None)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return TransferResult(key=key, path=str(dest), bytes=info.size, seconds=time.monotonic() - started,
                              sha256=digest or info.sha256)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except S3_ERRORS as exc:
            raise self.explain(exc, key) from exc

    def open_stream(self, key: str) -> Any:
        """The body of an object as a stream (``.read(n)``, ``.iter_chunks()``), through the transfer client:
        its reader may be slow (an image layer into Docker)."""
        try:
            return self.transfer_client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except S3_ERRORS as exc:
            raise self.explain(exc, key, transfer=True) from exc

    def presigned_get(self, key: str, expires: int = 900) -> str:
        """A GET URL for ``key`` valid ``expires`` seconds: a host without credentials can fetch it."""
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires)
        except S3_ERRORS as exc:
            raise self.explain(exc, key) from exc

    def copy(self, source_key: str, dest_key: str) -> None:
        """Server-side copy inside the bucket (multipart for large objects); metadata is kept."""
        try:
            self.transfer_client.copy({"Bucket": self.bucket, "Key": source_key}, self.bucket, dest_key,
                                      Config=self.config)
        except S3_ERRORS as exc:
            raise self.explain(exc, source_key, transfer=True) from exc

    def multipart_uploads(self, prefix: str) -> list[dict[str, Any]]:
        """Unfinished multipart uploads under ``prefix``: ``{"key", "upload_id", "initiated"}`` each."""
        found: list[dict[str, Any]] = []
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                problem = not_s3(page, ("Bucket", "IsTruncated"))
                if problem:
                    raise self.not_s3(problem)
                for upload in page.get("Uploads", []) or []:
                    found.append({"key": upload["Key"], "upload_id": upload["UploadId"],
                                  "initiated": upload.get("Initiated")})
        except S3_ERRORS as exc:
            raise self.explain(exc, prefix) from exc
        return found

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload: S3 drops its parts (they are billed until then)."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise self.explain(exc, key) from exc
        except S3_ERRORS as exc:
            raise self.explain(exc, key) from exc
