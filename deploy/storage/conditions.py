"""Does the store keep its promises about conditional writes? Asked of the store itself, with a throwaway object.

AWS S3 honours ``If-None-Match: *`` on create and ``If-Match: <etag>`` on update since 2024; among
S3-compatible stores some refuse the headers (501 NotImplemented, 400 InvalidArgument), and some
silently ignore them, so a "conditional" write simply goes through. Only the last is dangerous: a
writer that relies on ``If-Match`` to fence off a second writer (the managed-run watcher) would not
notice. The probe writes a throwaway object under ``<prefix>/.gpu-deploy-check/`` and watches what
the store does:

* create: ``If-None-Match: *`` on a new key must succeed, and a second create of that key must be
  refused with 412 PreconditionFailed;
* update: ``If-Match`` with the object's current ETag must succeed, and one with a stale ETag must
  be refused with 412.

A write that "went through" is read back before the store is called ignoring: the answer alone
could be a web page. The object is deleted afterwards, also when something failed.
:func:`probe_conditional_writes` never raises: an answer it does not understand (an HTML page, an
unknown error code, no connection) makes that condition ``unknown``, with the reason in one sentence.

Example::

    writes = probe_conditional_writes(Storage.from_settings(load_settings()))
    print(writes.describe())  # conditional writes: honoured (If-None-Match on create, If-Match on update)
    if writes.if_match.verdict != HONOURED:
        ...  # fence with a lease instead
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.parsers import ResponseParserError

from deploy.reach import why

from deploy.storage.bucket import CHECKS, Storage, answered_html
from deploy.storage.objects import PRECONDITION_FAILED, UNSUPPORTED

Verdict = Literal["honoured", "ignored", "refused", "unknown"]
HONOURED: Verdict = "honoured"
"""The store checked the condition: the write that had to fail failed with 412, the other went through."""
IGNORED: Verdict = "ignored"
"""The store took the header and did not check it: a write that had to fail went through."""
REFUSED: Verdict = "refused"
"""The store refused the header itself (501 NotImplemented, 400 InvalidArgument); nothing was written."""
UNKNOWN: Verdict = "unknown"
"""An answer the probe does not understand; ``detail`` says which."""

IF_NONE_MATCH, IF_MATCH = "If-None-Match", "If-Match"
_MAX_DETAIL = 160
_NOT_S3 = "an HTML page, not an S3 answer (is AWS_ENDPOINT_URL the S3 API endpoint?)"


@dataclass(frozen=True)
class Condition:
    """How the store treated one conditional header: a verdict and, unless honoured, what it did."""

    verdict: Verdict
    detail: str = ""


@dataclass(frozen=True)
class ConditionalWrites:
    """What the store does with ``If-None-Match: *`` on create and ``If-Match`` on update.

    ``left_behind``: the probe object's URL when it could not be deleted (no s3:DeleteObject), else "".
    """

    if_none_match: Condition
    if_match: Condition
    endpoint: str = ""
    left_behind: str = ""

    @property
    def honoured(self) -> bool:
        """Both conditions are checked by the store: ``If-Match`` can fence off a second writer."""
        return self.if_none_match.verdict == HONOURED and self.if_match.verdict == HONOURED

    def describe(self) -> str:
        """One line: ``conditional writes: NOT honoured (If-Match is ignored: a stale write went through)``."""
        if self.honoured:
            return f"conditional writes: {HONOURED} ({IF_NONE_MATCH} on create, {IF_MATCH} on update)"
        pairs = [(h, c) for h, c in ((IF_NONE_MATCH, self.if_none_match), (IF_MATCH, self.if_match))
                 if c.verdict != HONOURED]
        if len(pairs) == 2 and pairs[0][1] == pairs[1][1]:
            parts = [_part(f"{IF_NONE_MATCH} and {IF_MATCH}", "are", pairs[0][1])]
        else:
            parts = [_part(header, "is", condition) for header, condition in pairs]
        settled = any(c.verdict in (IGNORED, REFUSED) for _, c in pairs)
        return f"conditional writes: {'NOT honoured' if settled else UNKNOWN} ({'; '.join(parts)})"


def _part(headers: str, verb: str, condition: Condition) -> str:
    said = f"{headers} {verb} {condition.verdict}" if condition.verdict != UNKNOWN else f"{headers} unknown"
    return f"{said}: {condition.detail}" if condition.detail else said


@dataclass(frozen=True)
class _Answer:
    """One call's outcome, whatever it was: a response, an S3 error code, or a problem in words."""

    response: dict[str, Any] | None = None
    code: str = ""
    status: int | None = None
    message: str = ""
    problem: str = ""

    @property
    def etag(self) -> str:
        return str((self.response or {}).get("ETag") or "")

    @property
    def precondition_failed(self) -> bool:
        return self.code in PRECONDITION_FAILED

    @property
    def unsupported(self) -> bool:
        return self.code in UNSUPPORTED

    def said(self, with_message: bool = True) -> str:
        """What the store answered, as a clause: ``AccessDenied (HTTP 403: Access Denied)``."""
        if self.problem:
            return self.problem
        if self.response is not None:
            return "success"
        message = _clip(self.message) if with_message else ""
        if not self.code or self.code == str(self.status):  # no S3 error body: botocore names the status
            return f"HTTP {self.status or '?'}" + (f" ({message})" if message else "")
        inner = ": ".join(p for p in (f"HTTP {self.status}" if self.status else "", message) if p)
        return self.code + (f" ({inner})" if inner else "")


def _clip(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_DETAIL else line[:_MAX_DETAIL - 3] + "..."


def _call(call: Callable[[], dict[str, Any]], api: bool = True) -> _Answer:
    """``call()`` as an :class:`_Answer`; ``api=False`` for a GET of an object (its own content type)."""
    try:
        response = call()
    except ClientError as exc:
        if api and answered_html(exc.response):  # a page botocore could not read: it calls that a 500
            return _Answer(problem=_NOT_S3)
        error = exc.response.get("Error") or {}
        meta = exc.response.get("ResponseMetadata") or {}
        return _Answer(code=str(error.get("Code") or ""), status=meta.get("HTTPStatusCode"),
                       message=str(error.get("Message") or ""))
    except (BotoConnectionError, HTTPClientError) as exc:
        return _Answer(problem=f"no answer ({why(exc)})")
    except ResponseParserError:  # not a BotoCoreError
        return _Answer(problem="a reply that is not S3's XML")
    except KeyError as exc:
        return _Answer(problem=f"a reply without {exc.args[0] if exc.args else 'a field S3 always sends'}")
    except Exception as exc:  # noqa: BLE001 - the probe reports every answer in words; it never raises on one
        return _Answer(problem=_clip(str(exc).rstrip(". ") or "an error without a message"))
    if not isinstance(response, dict):
        return _Answer(problem=f"an answer botocore could not read ({type(response).__name__})")
    if api and answered_html(response):
        return _Answer(problem=_NOT_S3)
    return _Answer(response=response)


class _Probe:
    """The calls of one probe against one throwaway key; each returns an :class:`_Answer`."""

    BODIES = tuple(f"gpu-deploy conditional write probe {n}\n".encode() for n in range(5))

    def __init__(self, storage: Storage) -> None:
        self.storage, self.client, self.bucket = storage, storage.client, storage.bucket
        self.key = storage.key(CHECKS, f"conditional-{uuid.uuid4().hex[:12]}")
        self.wrote = False
        self.gave_up = False

    def put(self, body: bytes, **condition: str) -> _Answer:
        answer = _call(lambda: self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition))
        if answer.response is not None:
            self.wrote = True
        # No S3 answer at all (no connection, a web page): asking again tells nothing, and a dead
        # endpoint costs a minute of retries per call.
        self.gave_up = bool(answer.problem)
        return answer

    def holds(self, body: bytes) -> bool:
        """True when the object reads back as ``body``: a write that was answered 200 really landed."""
        def read() -> dict[str, Any]:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
            return {**got, "Body": got["Body"].read()}

        answer = _call(read, api=False)
        return answer.response is not None and answer.response.get("Body") == body

    def delete(self) -> str:
        """Remove the probe object; its URL when that failed, else ""."""
        if not self.wrote:
            return ""
        answer = _call(lambda: self.client.delete_object(Bucket=self.bucket, Key=self.key))
        return "" if answer.response is not None else self.storage.url(self.key)


def _went_through(probe: _Probe, answer: _Answer, body: bytes, what: str) -> Condition:
    """A write that had to fail was answered with success: ignored, if its bytes really landed."""
    if not answer.etag:
        return Condition(UNKNOWN, f"{what} was answered without an ETag, which S3 always sends")
    if not probe.holds(body):
        return Condition(UNKNOWN, f"{what} was answered with success, but the object does not hold its bytes")
    return Condition(IGNORED, f"{what} went through")


def _create(probe: _Probe) -> Condition:
    """``If-None-Match: *``: a first create succeeds, a second create of the same key gets 412."""
    first = probe.put(probe.BODIES[0], IfNoneMatch="*")
    if first.unsupported:
        return Condition(REFUSED, f"the store answered {first.said(with_message=False)}")
    if first.response is None:
        return Condition(UNKNOWN, f"a create of a new key was answered {first.said()}")
    if not first.etag:
        return Condition(UNKNOWN, "a create was answered without an ETag, which S3 always sends")
    second = probe.put(probe.BODIES[1], IfNoneMatch="*")
    if second.precondition_failed:
        return Condition(HONOURED)
    if second.response is not None:
        return _went_through(probe, second, probe.BODIES[1], "a second create of the same key")
    return Condition(UNKNOWN, f"a second create of the same key was answered {second.said()}, not 412")


def _update(probe: _Probe) -> Condition:
    """``If-Match``: a write with the current ETag succeeds, one with a stale ETag gets 412."""
    base = probe.put(probe.BODIES[2])
    if base.response is None or not base.etag:
        said = base.said() if base.response is None else "success without an ETag"
        return Condition(UNKNOWN, f"a plain write to start from was answered {said}")
    current = probe.put(probe.BODIES[3], IfMatch=base.etag)
    if current.unsupported:
        return Condition(REFUSED, f"the store answered {current.said(with_message=False)}")
    if current.precondition_failed:
        return Condition(UNKNOWN, "a write with the current ETag was refused with 412")
    if current.response is None:
        return Condition(UNKNOWN, f"a write with the current ETag was answered {current.said()}")
    stale = probe.put(probe.BODIES[4], IfMatch=base.etag)
    if stale.precondition_failed:
        return Condition(HONOURED)
    if stale.response is not None:
        return _went_through(probe, stale, probe.BODIES[4], "a stale write")
    return Condition(UNKNOWN, f"a write with a stale ETag was answered {stale.said()}, not 412")


def probe_conditional_writes(storage: Storage) -> ConditionalWrites:
    """Find out whether ``storage`` honours ``If-None-Match: *`` on create and ``If-Match`` on update.

    Up to seven small requests on a throwaway key under the prefix, deleted afterwards. Never raises
    for the store's answers: what it does not understand is ``unknown``, with the reason.

    >>> probe_conditional_writes(storage).describe()  # doctest: +SKIP
    'conditional writes: NOT honoured (If-Match is ignored: a stale write went through)'
    """
    probe = _Probe(storage)
    try:
        create = _create(probe)
        update = Condition(UNKNOWN, create.detail) if probe.gave_up else _update(probe)
    finally:
        left_behind = probe.delete()
    return ConditionalWrites(if_none_match=create, if_match=update, endpoint=storage.endpoint,
                             left_behind=left_behind)
