"""No log record shows a credential: secrets register themselves, and marked credentials are masked whoever logs."""

from __future__ import annotations

import logging

import pytest

from deploy import redact
from deploy.settings import Secret, load_settings


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    redact.install()
    caplog.set_level(logging.DEBUG)
    return caplog


def test_a_secret_setting_is_masked_in_every_logger_s_records(captured: pytest.LogCaptureFixture) -> None:
    settings = load_settings(environ={"AWS_ACCESS_KEY_ID": "AKIDUNITTEST0001", "RUNPOD_API_KEY": "rp-unit-key-42"})
    assert settings.aws_access_key_id is not None  # the Secret registered its value when it was made
    logging.getLogger("botocore.endpoint").debug("Sending %s", {"key": "AKIDUNITTEST0001", "rp": "rp-unit-key-42"})
    logging.getLogger("some.library").info("a key %s in the message", "AKIDUNITTEST0001")
    text = captured.text
    assert "AKIDUNITTEST0001" not in text and "rp-unit-key-42" not in text
    assert text.count(redact.MASK) == 3


@pytest.mark.parametrize("line", [
    "{'Authorization': b'AWS4-HMAC-SHA256 Credential=SOMEKEYID/20261203/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=0123abcdef'}",
    "GET /b/k?X-Amz-Credential=SOMEKEYID%2F2026&X-Amz-Signature=feedbeef&X-Amz-Security-Token=tok HTTP/1.1",
    "headers={'Authorization': 'Bearer rp_LIVE_unknown_to_us'}",
    "https://rest.runpod.io/v1/pods?api_key=rp_LIVE_unknown_to_us",
])
def test_marked_credentials_are_masked_even_when_unknown(captured: pytest.LogCaptureFixture, line: str) -> None:
    logging.getLogger("urllib3.connectionpool").debug(line)
    text = captured.text
    for secret in ("SOMEKEYID", "0123abcdef", "feedbeef", "tok ", "rp_LIVE_unknown_to_us"):
        assert secret not in text


def test_a_traceback_in_a_record_is_masked_too(captured: pytest.LogCaptureFixture) -> None:
    Secret("tracebacksecret99")
    try:
        raise ValueError("refused tracebacksecret99")
    except ValueError:
        logging.getLogger("x").exception("failed")
    assert "tracebacksecret99" not in captured.text


def test_short_values_are_not_registered() -> None:
    Secret("ab")
    assert redact.redact("a b ab") == "a b ab"
