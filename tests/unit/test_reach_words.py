"""What a failed connection is called, and when an S3 call is tried again: pure rules, no servers."""

from __future__ import annotations

import logging
import socket

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from deploy.reach import Gap, Unreachable, raise_gaps, why
from deploy.errors import HostError, StorageError
from deploy.storage.retry import RetryPolicy, for_control, for_transfers, reason_to_retry


def refused() -> ConnectionRefusedError:
    return ConnectionRefusedError(111, "Connection refused")


@pytest.mark.parametrize(("exc", "said"), [
    (socket.gaierror(-2, "Name or service not known"), "the name nothing.invalid does not resolve"),
    (refused(), "nothing listens on port 9 of nothing.invalid"),
    (EndpointConnectionError(endpoint_url="http://x", error=refused()), "nothing listens on port 9 of nothing.invalid"),
    (ReadTimeoutError(endpoint_url="http://x"), "it accepted the connection but sent no answer within 5 s"),
    (TimeoutError(), "it did not accept a connection within 2 s (a firewall drops it, or the address is wrong)"),
    (OSError(113, "No route to host"), "there is no route to nothing.invalid"),
    (ConnectionResetError(104, "reset"), "it closed the connection without an answer"),
])
def test_a_failed_connection_is_said_in_words(exc: BaseException, said: str) -> None:
    assert why(exc, "nothing.invalid", 9, connect_timeout=2, read_timeout=5) == said


def test_a_wrapped_cause_is_found_and_no_class_name_is_said() -> None:
    import paramiko
    import requests

    wrapped = requests.ConnectionError("HTTPConnectionPool(host='x', port=9): Max retries exceeded (Caused by "
                                       "NewConnectionError('<urllib3.connection.HTTPConnection object>'))")
    wrapped.__context__ = refused()
    assert why(wrapped, "x", 9) == "nothing listens on port 9 of x"
    paramiko_error = paramiko.ssh_exception.NoValidConnectionsError({("127.0.0.1", 9): refused()})
    assert why(paramiko_error, "127.0.0.1", 9) == "nothing listens on port 9 of 127.0.0.1"
    assert why(RuntimeError("SomethingError happened"), "x", 9) == "the connection failed"


def test_one_gap_is_its_own_error_and_several_are_one_sentence() -> None:
    with pytest.raises(HostError):
        raise_gaps([Gap("the host", HostError("Cannot reach h:22 over SSH: x."), "host")])
    with pytest.raises(Unreachable) as err:
        raise_gaps([Gap("a", StorageError("First.")), Gap("b", HostError("Second."))])
    assert str(err.value) == "2 things this task needs cannot be used: First; Second."


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def attempt(policy: RetryPolicy, clock: Clock, context: dict, attempts: int, **outcome) -> float | None:
    return policy.needs_retry(attempts=attempts, request_dict={"context": context}, **outcome)


def test_a_silent_endpoint_fails_after_one_try_of_a_listing(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    policy = RetryPolicy(10, for_control(5), "127.0.0.1", 9, clock=clock)
    context: dict = {}
    policy.started(context)
    clock.now = 5.0  # connected, then the 5 s read timeout
    assert attempt(policy, clock, context, 1, caught_exception=ReadTimeoutError(endpoint_url="x")) is None


def test_a_refused_connection_is_retried_with_a_line_each_until_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="deploy.retry")
    clock = Clock()
    policy = RetryPolicy(10, for_control(5), "127.0.0.1", 9, clock=clock)
    context: dict = {}
    policy.started(context)
    error = EndpointConnectionError(endpoint_url="http://127.0.0.1:9", error=refused())
    delays = []
    for tries in range(1, 10):
        delay = attempt(policy, clock, context, tries, caught_exception=error)
        if delay is None:
            break
        delays.append(delay)
        clock.now += delay
    assert 1 <= len(delays) < 9  # some retries, then the deadline: 3 x 5 s, a whole try (10 s) counted ahead
    assert clock.now <= 5  # so no try started that could have ended after 15 s
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("S3 did not answer (nothing listens on port 9 of 127.0.0.1); retry 1 of 9 in ")
    assert len(lines) == len(delays)


def test_throttling_is_retried_and_a_web_page_is_not() -> None:
    class Http:
        def __init__(self, status: int, content_type: str) -> None:
            self.status_code, self.headers = status, {"content-type": content_type}

    patience = for_transfers(5)
    slow_down = (Http(503, "application/xml"), {"Error": {"Code": "SlowDown"}})
    page = (Http(500, "text/html"), {"Error": {"Code": "500"}})
    assert reason_to_retry(slow_down, None, "h", 1, patience) == "answered 503 SlowDown"
    assert reason_to_retry(page, None, "h", 1, patience) is None
    assert reason_to_retry((Http(404, "application/xml"), {"Error": {"Code": "NoSuchKey"}}), None, "h", 1,
                           patience) is None
