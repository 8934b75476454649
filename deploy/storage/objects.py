"""Small JSON objects in the bucket, written with ``If-None-Match`` / ``If-Match`` where the store allows.

The run ledger, the watcher's state and the training side all keep small JSON objects beside the
checkpoints; this is the one writer and reader they share. It lives in storage, below both the
operator's ledger and the training side (whose image carries ``deploy.storage`` but not
``deploy.ledger``). Whether a store honours the conditions at all is what
:func:`deploy.storage.conditions.probe_conditional_writes` finds out.

Example::

    etag = put_json(storage, storage.key("runs", "r1", "record.json"), {"image": "train:1"}, if_none_match=True)
    data, etag = get_json(storage, storage.key("runs", "r1", "record.json"))
    put_json(storage, key, {**data, "note": "x"}, if_match=etag)  # ConditionFailed if someone wrote since
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy.errors import StorageError
from deploy.storage.bucket import Storage

UNSUPPORTED = ("NotImplemented", "501", "InvalidArgument")
"""Error codes of providers without conditional writes (S3 has them since 2024, some S3-compatible stores not)."""

PRECONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict")
"""Error codes of a condition that was checked and did not hold (409 ConditionalRequestConflict: a race)."""


def _unsupported(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in UNSUPPORTED


def _precondition(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in PRECONDITION_FAILED


class ConditionFailed(StorageError):
    """A conditional write found the object changed (or present) since it was read."""


def put_json(storage: Storage, key: str, data: Any, if_none_match: bool = False, if_match: str | None = None) -> str:
    """Write ``data`` as JSON; returns the new ETag. A failed condition raises :class:`ConditionFailed`.

    Where the provider refuses the condition itself, the write goes ahead without it: ``If-None-Match``
    then becomes a check before the write (a race can slip through, but event keys are unique anyway),
    and ``If-Match`` a plain write (only the index cache uses it).
    """
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    args: dict[str, Any] = {"Bucket": storage.bucket, "Key": key, "Body": body, "ContentType": "application/json"}
    if if_none_match:
        args["IfNoneMatch"] = "*"
    elif if_match:
        args["IfMatch"] = if_match
    try:
        return str(storage.client.put_object(**args).get("ETag", ""))
    except ClientError as exc:
        if _precondition(exc):
            raise ConditionFailed(f"{storage.url(key)} exists or changed since it was read.") from exc
        if not ((if_none_match or if_match) and _unsupported(exc)):
            raise storage.explain(exc, key) from exc
    except BotoCoreError as exc:
        raise storage.explain(exc, key) from exc
    return _put_unconditionally(storage, key, args)


def _put_unconditionally(storage: Storage, key: str, args: dict[str, Any]) -> str:
    if args.pop("IfNoneMatch", None) and storage.head(key) is not None:
        raise ConditionFailed(f"{storage.url(key)} exists already.")
    args.pop("IfMatch", None)
    try:
        return str(storage.client.put_object(**args).get("ETag", ""))
    except (ClientError, BotoCoreError) as exc:
        raise storage.explain(exc, key) from exc


def get_json(storage: Storage, key: str) -> tuple[Any, str] | None:
    """(parsed JSON, ETag) of ``key``, or None when it does not exist or is not JSON."""
    try:
        resp = storage.client.get_object(Bucket=storage.bucket, Key=key)
        body = resp["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise storage.explain(exc, key) from exc
    except BotoCoreError as exc:
        raise storage.explain(exc, key) from exc
    try:
        return json.loads(body), str(resp.get("ETag", ""))
    except ValueError:
        return None
