"""Credentials never reach a log: every log record is cleaned where it is made, botocore's and urllib3's included.

``fab --debug`` turns on every library's debug logging, and botocore logs the headers it signs
(``Authorization: AWS4-HMAC-SHA256 Credential=<access key id>/...``) and requests logs URLs (a
presigned URL carries ``X-Amz-Credential``). :func:`install` wraps the logging module's record factory,
so a record's message, arguments and traceback text are cleaned before any handler or filter sees them,
whichever logger made it and whichever handler a library or a user added later. Two kinds of thing are
masked: every value of a :class:`deploy.settings.Secret` (they register themselves here, see
:func:`register`), and whatever follows a credential's marker in text (``Bearer``, ``Credential=``,
``Signature=``, ``X-Amz-Security-Token``, ``AWSAccessKeyId=``, ``api_key=``), known to us or not.

Example::

    register("AKIDEXAMPLE123")
    redact("Credential=AKIDEXAMPLE123/20261203/us-east-1/s3/aws4_request")   # 'Credential=********'
    install()   # every log record from now on goes through redact()
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "********"
MIN_LENGTH = 6
"""Shorter values are not registered: masking a 3-letter string everywhere would garble every log line."""

_END = r"[^\s'\",;&)>\]}]+"
MARKERS = tuple(re.compile(pattern, re.IGNORECASE) for pattern in (
    rf"(\bbearer\s+){_END}",
    rf"(\b(?:x-amz-)?credential=){_END}",
    rf"(\b(?:x-amz-)?signature=){_END}",
    rf"(\bx-amz-security-token['\"]?\s*[=:]\s*b?['\"]?){_END}",
    rf"(\bawsaccesskeyid=){_END}",
    rf"(\bapi_key=){_END}",
))
"""A credential's marker, then the credential itself (up to a space, quote, comma, ``&`` or bracket)."""

_values: set[str] = set()
_lock = threading.Lock()
_installed = False


def register(value: str) -> None:
    """Mask ``value`` wherever it shows up in a log record from now on (a secret setting, an API key)."""
    if len(value) >= MIN_LENGTH:
        with _lock:
            _values.add(value)


def redact(text: str) -> str:
    """``text`` with every registered value and every marked credential replaced by :data:`MASK`."""
    for value in sorted(_values, key=len, reverse=True):  # a longer secret first: it may contain a shorter one
        if value in text:
            text = text.replace(value, MASK)
    for marker in MARKERS:
        text = marker.sub(lambda m: m.group(1) + MASK, text)
    return text


def _clean(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a record that cannot format itself is the logging module's to report
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install() -> None:
    """Clean every log record made from now on in this process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _clean(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
