"""The conditional-write probe's verdicts, against in-process stores: moto's ``mock_aws`` (it honours both
conditions) and a small fake client for the stores moto does not imitate (ignoring, refusing, odd answers).

The same probe against moto's server and the proxy that ignores or refuses the headers is in
tests/integration/test_s3_conditions.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.parsers import ResponseParserError

from deploy.errors import StorageError
from deploy.storage import Storage
from deploy.storage.conditions import (HONOURED, IGNORED, REFUSED, UNKNOWN, Condition, ConditionalWrites,
                                       probe_conditional_writes)
from deploy.storage.permissions import check_bucket
from tasks.s3 import WITHOUT_CONDITIONS, conditional_writes_line

PROBES = "p/.gpu-deploy-check/"


def client_error(code: str, status: int, operation: str = "PutObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} message"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


class FakeS3:
    """Just enough of a boto3 S3 client for the probe: objects in a dict, a policy per conditional header.

    A policy is "honour", "ignore", or an exception raised whenever a write carries that header.
    """

    def __init__(self, if_none_match: Any = "honour", if_match: Any = "honour", etag: bool = True,
                 lands: bool = True, fail: Exception | None = None, delete_fails: bool = False) -> None:
        self.policy = {"IfNoneMatch": if_none_match, "IfMatch": if_match}
        self.etag, self.lands, self.fail, self.delete_fails = etag, lands, fail, delete_fails
        self.objects: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []

    @staticmethod
    def tag(body: bytes) -> str:
        return f'"{hashlib.md5(body).hexdigest()}"'

    def put_object(self, Bucket: str, Key: str, Body: bytes, **condition: str) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("put", Key))
        if self.fail is not None:
            raise self.fail
        for header, value in condition.items():
            policy = self.policy[header]
            if isinstance(policy, Exception):
                raise policy
            if policy == "honour":
                current = self.objects.get(Key)
                if header == "IfNoneMatch" and current is not None:
                    raise client_error("PreconditionFailed", 412)
                if header == "IfMatch" and (current is None or self.tag(current) != value):
                    raise client_error("PreconditionFailed", 412)
        if self.lands or not condition:
            self.objects[Key] = Body
        return {"ETag": self.tag(Body)} if self.etag else {"ResponseMetadata": {"HTTPStatusCode": 200}}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("get", Key))

        class Body:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def read(self) -> bytes:
                return self.data

        if Key not in self.objects:
            raise client_error("NoSuchKey", 404, "GetObject")
        return {"Body": Body(self.objects[Key])}

    def delete_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("delete", Key))
        if self.delete_fails:
            raise client_error("AccessDenied", 403, "DeleteObject")
        self.objects.pop(Key, None)
        return {}


def probe(fake: FakeS3) -> ConditionalWrites:
    return probe_conditional_writes(Storage(fake, "bucket", "p", endpoint="http://store.test"))


def test_moto_honours_both_conditions_and_the_probe_object_is_gone(moto_storage) -> None:
    writes = probe_conditional_writes(moto_storage)
    assert writes.if_none_match == Condition(HONOURED) and writes.if_match == Condition(HONOURED)
    assert writes.honoured
    assert writes.describe() == "conditional writes: honoured (If-None-Match on create, If-Match on update)"
    assert list(moto_storage.list(moto_storage.key(".gpu-deploy-check"))) == []


def test_a_store_that_ignores_both_headers_is_called_ignored_for_each() -> None:
    fake = FakeS3(if_none_match="ignore", if_match="ignore")
    writes = probe(fake)
    assert writes.if_none_match == Condition(IGNORED, "a second create of the same key went through")
    assert writes.if_match == Condition(IGNORED, "a stale write went through")
    assert not writes.honoured
    assert writes.describe() == ("conditional writes: NOT honoured (If-None-Match is ignored: a second create of "
                                 "the same key went through; If-Match is ignored: a stale write went through)")
    assert fake.objects == {}


def test_only_the_condition_that_is_not_honoured_is_named() -> None:
    writes = probe(FakeS3(if_match="ignore"))
    assert writes.if_none_match.verdict == HONOURED
    assert writes.describe() == "conditional writes: NOT honoured (If-Match is ignored: a stale write went through)"


@pytest.mark.parametrize(("code", "status"), [("NotImplemented", 501), ("InvalidArgument", 400), ("501", 501)])
def test_a_store_that_refuses_the_headers_is_called_refused(code: str, status: int) -> None:
    fake = FakeS3(if_none_match=client_error(code, status), if_match=client_error(code, status))
    writes = probe(fake)
    assert (writes.if_none_match.verdict, writes.if_match.verdict) == (REFUSED, REFUSED)
    said = f"HTTP {status}" if code == "501" else f"{code} (HTTP {status})"
    assert writes.describe() == f"conditional writes: NOT honoured (If-None-Match and If-Match are refused: " \
                                f"the store answered {said})"
    assert fake.objects == {}  # the plain write the update probe starts from was deleted too


def test_an_error_code_the_probe_does_not_know_is_unknown_with_the_reason() -> None:
    writes = probe(FakeS3(if_match=client_error("SlowDown", 503)))
    assert writes.if_none_match.verdict == HONOURED
    assert writes.if_match == Condition(UNKNOWN, "a write with the current ETag was answered SlowDown "
                                                 "(HTTP 503: SlowDown message)")
    assert writes.describe() == ("conditional writes: unknown (If-Match unknown: a write with the current ETag "
                                 "was answered SlowDown (HTTP 503: SlowDown message))")


def test_a_write_answered_without_an_etag_is_not_taken_for_s3() -> None:
    writes = probe(FakeS3(etag=False))
    assert writes.if_none_match == Condition(UNKNOWN, "a create was answered without an ETag, which S3 always sends")
    assert writes.if_match.verdict == UNKNOWN


def test_a_conditional_write_answered_200_whose_bytes_never_landed_is_not_called_ignored() -> None:
    writes = probe(FakeS3(if_none_match="ignore", if_match="ignore", lands=False))
    assert writes.if_none_match == Condition(
        UNKNOWN, "a second create of the same key was answered with success, but the object does not hold its bytes")


def test_no_connection_costs_one_call_and_leaves_nothing_to_delete() -> None:
    fake = FakeS3(fail=EndpointConnectionError(endpoint_url="http://store.test"))
    writes = probe(fake)
    assert fake.calls == [("put", fake.calls[0][1])]
    assert writes.if_none_match == writes.if_match
    assert writes.if_match.verdict == UNKNOWN
    assert writes.describe() == ('conditional writes: unknown (If-None-Match and If-Match unknown: a create of a '
                                 'new key was answered no answer (could not connect to the endpoint URL: '
                                 '"http://store.test"))')


@pytest.mark.parametrize(("error", "said"), [
    (ResponseParserError("Unable to parse response (b'<html>'), invalid XML received"), "a reply that is not S3's XML"),
    (KeyError("UploadId"), "a reply without UploadId"), (ValueError("odd"), "odd")],
    ids=["parser", "keyerror", "valueerror"])
def test_any_exception_from_the_client_becomes_unknown_never_a_traceback(error: Exception, said: str) -> None:
    writes = probe(FakeS3(fail=error))
    assert writes.if_none_match.verdict == UNKNOWN
    assert writes.if_none_match.detail.endswith(said)
    assert error.__class__.__name__ not in writes.describe()  # words for people, not class names
    assert "\n" not in writes.describe()


def test_the_probe_object_lives_under_the_prefix_and_is_deleted_after_a_failure() -> None:
    fake = FakeS3(if_match=client_error("InternalError", 500))
    writes = probe(fake)
    keys = {key for _, key in fake.calls}
    assert len(keys) == 1 and next(iter(keys)).startswith(PROBES + "conditional-")
    assert fake.calls[-1][0] == "delete" and fake.objects == {}
    assert writes.left_behind == ""


def test_an_object_that_cannot_be_deleted_is_named_and_the_verdicts_stand() -> None:
    fake = FakeS3(delete_fails=True)
    writes = probe(fake)
    assert writes.honoured
    assert writes.left_behind.startswith("s3://bucket/" + PROBES + "conditional-")


def test_an_html_page_is_not_taken_for_a_successful_write() -> None:
    class WebServer(FakeS3):
        def put_object(self, **args: Any) -> dict[str, Any]:
            return {"ETag": '"x"', "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {
                "content-type": "text/html; charset=utf-8", "content-length": "1200"}}}

    writes = probe(WebServer())
    assert writes.if_none_match.verdict == UNKNOWN == writes.if_match.verdict
    assert "an HTML page, not an S3 answer" in writes.describe()


def test_s3_check_line_adds_what_fab_train_does_without_conditional_writes() -> None:
    honoured = ConditionalWrites(Condition(HONOURED), Condition(HONOURED))
    ignored = ConditionalWrites(Condition(HONOURED), Condition(IGNORED, "a stale write went through"))
    assert conditional_writes_line(honoured) == honoured.describe()
    assert conditional_writes_line(ignored) == ("conditional writes: NOT honoured (If-Match is ignored: a stale "
                                                f"write went through); {WITHOUT_CONDITIONS}")
    assert conditional_writes_line(None) == ("conditional writes: not checked (the probe object could not be "
                                             "written)")


def test_check_names_an_endpoint_whose_multipart_answer_has_no_upload_id(moto_storage, monkeypatch) -> None:
    # What an endpoint that is not S3 answers with a 200 and an empty or foreign body: once a KeyError.
    monkeypatch.setattr(moto_storage.client, "create_multipart_upload",
                        lambda **_: {"ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}}})
    with pytest.raises(StorageError) as err:
        check_bucket(moto_storage)
    assert str(err.value) == ("AWS S3 is not an S3 API: it answered with a reply to create multipart upload without "
                              "the UploadId S3 always sends; check AWS_ENDPOINT_URL: it must be the S3 API endpoint, "
                              "not a web page or a login in front of one.")


def test_check_reports_the_conditional_writes_of_the_store(moto_storage) -> None:
    report = check_bucket(moto_storage)
    assert report.ok and report.conditional_writes is not None and report.conditional_writes.honoured
    assert list(moto_storage.list(moto_storage.key(".gpu-deploy-check"))) == []


def test_check_names_an_answer_botocore_cannot_parse_in_one_sentence(moto_storage, monkeypatch) -> None:
    # botocore's ResponseParserError is not a BotoCoreError, so `except BotoCoreError` alone lets it through.
    def unparseable(**_: Any) -> dict[str, Any]:
        raise ResponseParserError("Unable to parse response (syntax error), invalid XML received:\n<html>")

    monkeypatch.setattr(moto_storage.client, "list_objects_v2", unparseable)
    with pytest.raises(StorageError) as err:
        check_bucket(moto_storage)
    assert str(err.value) == ("AWS S3 is not an S3 API: it answered with a reply that is not S3's XML; check "
                              "AWS_ENDPOINT_URL: it must be the S3 API endpoint, not a web page or a login in front "
                              "of one.")
