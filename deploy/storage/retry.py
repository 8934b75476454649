"""How long one S3 call may take, and retries that say so: the S3 client's timeouts and retry policy for tasks.

botocore on its own retries a dead or silent endpoint ``AWS_MAX_ATTEMPTS`` times, each try waiting up to
its read timeout: ten tries of 60 s is ten minutes of silence. A task's client instead gets a
:class:`Patience`: a connect timeout, a read timeout, and a deadline for the whole call. A retry is made
only when it can still finish before the deadline (the time so far, the back-off and one more try's
connect and read timeouts), and each one is one line on stderr through the ``deploy.retry`` logger
(``S3 did not answer (nothing listens on port 9 of 127.0.0.1); retry 1 of 9 in 0.4 s``).

Two patiences, because calls differ: listing, heading and small JSON objects are answered at once by any
store, so :func:`for_control` waits ``CONNECT_TIMEOUT_SECONDS`` for an answer and a silent endpoint fails
after one try; uploads of large parts and a multipart upload's completion can keep a store busy for
a minute before it answers, so :func:`for_transfers` keeps the 60 s read timeout and a five-minute deadline
for its retries. :class:`deploy.storage.bucket.Storage` uses one client of each.

Example::

    policy = RetryPolicy(max_attempts=10, patience=for_control(5))
    policy.register(client)        # needs-retry.s3: our decision, announced on stderr
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deploy.reach import why

logger = logging.getLogger("deploy.retry")
"""One line per retry, at WARNING: the tasks print it on stderr (tasks/_boundary)."""

_STARTED = "gpu_deploy_started"
THROTTLED = {"Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded", "RequestThrottled",
             "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestThrottledException",
             "EC2ThrottledException", "BandwidthLimitExceeded"}
TRANSIENT = {"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "InternalError",
             "ServiceUnavailable", "SlowDown"}
TRANSIENT_STATUS = {429, 500, 502, 503, 504}
MAX_BACKOFF = 20.0


@dataclass(frozen=True)
class Patience:
    """Seconds for a connect, for an answer (each read), and for the whole call with its retries."""

    connect_timeout: float
    read_timeout: float
    deadline: float

    def one_try(self) -> float:
        """The longest one try can take without an answer."""
        return self.connect_timeout + self.read_timeout


def for_control(connect_timeout: float) -> Patience:
    """Listing, heads, small objects: an answer within ``connect_timeout``; a silent store fails after one try."""
    return Patience(connect_timeout, connect_timeout, deadline=3 * connect_timeout)


def for_transfers(connect_timeout: float) -> Patience:
    """Parts of large files: a store may take a minute to answer a part or a multipart completion."""
    return Patience(connect_timeout, 60.0, deadline=300.0)


def _status(response: Any) -> tuple[int | None, str, Mapping[str, str]]:
    """(HTTP status, S3 error code, headers) of botocore's ``(http_response, parsed)``."""
    http, parsed = response
    error = (parsed or {}).get("Error") or {}
    headers = {k.lower(): v for k, v in (getattr(http, "headers", None) or {}).items()}
    return getattr(http, "status_code", None), str(error.get("Code") or ""), headers


def reason_to_retry(response: Any, caught: BaseException | None, host: str | None, port: int | None,
                    patience: Patience) -> str | None:
    """Why this try may be worth another (``did not answer (...)``, ``answered 503 SlowDown``); None if not."""
    if caught is not None:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        if isinstance(caught, (BotoConnectionError, HTTPClientError)):
            return f"did not answer ({why(caught, host, port, patience.connect_timeout, patience.read_timeout)})"
        return None
    if response is None:
        return None
    status, code, headers = _status(response)
    if "html" in headers.get("content-type", "").lower() and not any(h.startswith("x-amz") for h in headers):
        return None  # a web page does not turn into S3 by asking again
    if code in THROTTLED or code in TRANSIENT or status in TRANSIENT_STATUS:
        return f"answered {status}" + (f" {code}" if code and code != str(status) else "")
    return None


def backoff(attempt: int, throttled: bool) -> float:
    """Seconds before try ``attempt + 1``: exponential with jitter (as botocore's standard mode), capped."""
    base = 1.0 if throttled else 0.25
    return random.uniform(0.5, 1.0) * min(MAX_BACKOFF, base * 2 ** (attempt - 1))


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 1 else f"{value:.0f} s"


class RetryPolicy:
    """Our own ``needs-retry`` handler for an S3 client whose botocore retries are off (one attempt).

    Same conditions as botocore's standard mode (no connection, throttling, transient 5xx), the same
    back-off, ``max_attempts`` tries at most, and never past ``patience.deadline``; every retry announced.
    """

    def __init__(self, max_attempts: int, patience: Patience, host: str | None = None, port: int | None = None,
                 clock: Any = time.monotonic) -> None:
        self.max_attempts, self.patience, self.host, self.port, self.clock = max_attempts, patience, host, port, clock

    def register(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-call.s3", self.started, unique_id="gpu-deploy-retry-started")
        events.register("needs-retry.s3", self.needs_retry, unique_id="gpu-deploy-retry")

    def started(self, context: dict[str, Any], **_: Any) -> None:
        context.setdefault(_STARTED, self.clock())

    def needs_retry(self, response: Any = None, attempts: int = 1, caught_exception: BaseException | None = None,
                    request_dict: Mapping[str, Any] | None = None, **_: Any) -> float | None:
        """Seconds to wait before the next try, or None: this try's outcome is the call's."""
        reason = reason_to_retry(response, caught_exception, self.host, self.port, self.patience)
        if reason is None or attempts >= self.max_attempts:
            return None
        context = (request_dict or {}).get("context") or {}
        elapsed = self.clock() - context.get(_STARTED, self.clock())
        throttled = response is not None and _status(response)[1] in THROTTLED
        delay = backoff(attempts, throttled)
        if elapsed + delay + self.patience.one_try() > self.patience.deadline:
            return None
        logger.warning("S3 %s; retry %d of %d in %s", reason, attempts, self.max_attempts - 1, _seconds(delay))
        return delay
