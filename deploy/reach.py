"""Is it there? What a failed connection means in plain words, and the checks every task makes before its work.

A task that needs the S3 endpoint, an SSH host or RunPod's API asks each one first, all at once
(:func:`preflight`), with ``CONNECT_TIMEOUT_SECONDS`` for an answer: a dead endpoint is then one
sentence within seconds that names it and the setting (or flag, or file) that named it, instead of a
minute of a client's retries. The checks themselves live beside their services
(:meth:`deploy.storage.bucket.Storage.reach`, :func:`deploy.hosts.ssh.reach_host`,
:meth:`deploy.pods.api.PodApi.reach`); here is what they share: :func:`why` (an exception, or a chain
of them as botocore, requests and paramiko wrap them, as the words a user needs: "the name
nothing.invalid does not resolve", "nothing listens on port 9 of 127.0.0.1", "it accepted the
connection but sent no answer within 5 s") and :func:`greeting` (a TCP connect and the first line the
server sends, for SSH).

Example::

    why(exc, "127.0.0.1", 9, connect_timeout=5)   # 'nothing listens on port 9 of 127.0.0.1'
    greeting("127.0.0.1", 2222, timeout=5)        # 'SSH-2.0-OpenSSH_9.6'
"""

from __future__ import annotations

import errno
import http.client
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from deploy.errors import DeployError

_NO_ROUTE = (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)


class Silent(OSError):
    """The server accepted the connection and said nothing within the timeout."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps, as botocore, urllib3, requests and paramiko wrap a socket's error."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        kwargs = getattr(current, "kwargs", None)
        if isinstance(kwargs, dict):
            inner.append(kwargs.get("error"))
        errors = getattr(current, "errors", None)  # paramiko's NoValidConnectionsError: {address: error}
        if isinstance(errors, dict):
            inner.extend(errors.values())
        inner.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        todo.extend(e for e in inner if isinstance(e, BaseException))


def _named(exc: BaseException, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def why(exc: BaseException, host: str | None = None, port: int | None = None, connect_timeout: float | None = None,
        read_timeout: float | None = None) -> str:
    """What went wrong with a connection, in words and without an exception's class name.

    >>> why(ConnectionRefusedError(111, "Connection refused"), "127.0.0.1", 9)
    'nothing listens on port 9 of 127.0.0.1'
    """
    chain = list(causes(exc))
    where = f"port {port} of {host}" if host and port else (host or "the address")
    if any(isinstance(e, socket.gaierror) or _named(e, "NameResolutionError") for e in chain):
        return f"the name {host} does not resolve" if host else "the host name does not resolve"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return f"nothing listens on {where}"
    if any(isinstance(e, OSError) and e.errno in _NO_ROUTE for e in chain):
        return f"there is no route to {host or 'the host'}"
    if any(isinstance(e, Silent) for e in chain) or any(_named(e, "ReadTimeoutError", "ReadTimeout") for e in chain):
        waited = f" within {read_timeout:g} s" if read_timeout else ""
        return f"it accepted the connection but sent no answer{waited}"
    if any(isinstance(e, (TimeoutError, socket.timeout)) or _named(e, "ConnectTimeoutError", "ConnectTimeout")
           for e in chain):
        waited = f" within {connect_timeout:g} s" if connect_timeout else ""
        return f"it did not accept a connection{waited} (a firewall drops it, or the address is wrong)"
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return "the TLS handshake failed (https:// to a plain-HTTP port, or a certificate this machine does not trust)"
    if any(isinstance(e, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, EOFError,
                          http.client.RemoteDisconnected))
           or _named(e, "ConnectionClosedError", "ProtocolError") for e in chain):
        return "it closed the connection without an answer"
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror[0].lower() + e.strerror[1:]
    said = str(exc).strip().rstrip(".")
    if said and not _CLASS_NAME.search(said):  # botocore's own words ("Could not connect to the endpoint URL: ...")
        return said[0].lower() + said[1:]
    return "the connection failed"


_CLASS_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception|Timeout)\b|<\w+\.")
"""A message that quotes a class name or an object's repr is not for a user."""


def greeting(host: str, port: int, timeout: float) -> str:
    """Connect and read the first line the server sends (SSH's ``SSH-2.0-...``); :class:`Silent` when
    it sends nothing within ``timeout``, an ``OSError`` when the connect fails."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        received = b""
        while b"\n" not in received and len(received) < 512:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Silent(f"no greeting within {timeout:g} s")
            sock.settimeout(left)
            try:
                piece = sock.recv(512)
            except (TimeoutError, socket.timeout):
                raise Silent(f"no greeting within {timeout:g} s") from None
            if not piece:
                break
            received += piece
    if not received:
        raise ConnectionResetError(errno.ECONNRESET, "closed without a greeting")
    return received.split(b"\n", 1)[0].decode("ascii", "replace").strip()


# --------------------------------------------------------------------------- all checks at once


Check = Callable[[], None]
"""One endpoint's check: returns when it answered, raises a :class:`DeployError` sentence when not."""


@dataclass(frozen=True)
class Gap:
    """What a check found: the endpoint (``the bucket s3://b/p``), the sentence why it cannot be used, and its
    kind (``bucket``, ``host``, ``api``: what the task's plan cannot show without it), and the subject checked
    (a host's :class:`~deploy.hosts.HostSpec`), for a task that goes on with the others."""

    what: str
    error: DeployError
    kind: str = ""
    subject: Any = None


def preflight(checks: Sequence[tuple[Any, ...]]) -> list[Gap]:
    """Run every ``(what, check[, kind[, subject]])`` at once (each bounded by its own timeout); the ones that failed.

    Checks run in threads, so a task that needs a bucket, two hosts and the API waits for the slowest
    one, not for their sum.
    """
    if not checks:
        return []

    def one(item: tuple[Any, ...]) -> Gap | None:
        what, check, *rest = item
        try:
            check()
        except DeployError as exc:
            return Gap(what, exc, *rest)
        return None

    with ThreadPoolExecutor(max_workers=min(8, len(checks))) as pool:
        return [gap for gap in pool.map(one, checks) if gap is not None]


class Unreachable(DeployError):
    """Several endpoints a task needs cannot be used; the message names each."""


class NotChecked(DeployError):
    """A dry run could not check everything it needs; its plan is printed with what is missing marked."""


def raise_gaps(gaps: Sequence[Gap]) -> None:
    """One gap: its own error (its class, its sentence); several: one :class:`Unreachable` naming each."""
    if len(gaps) == 1:
        raise gaps[0].error
    if gaps:
        raise Unreachable(f"{len(gaps)} things this task needs cannot be used: "
                          + "; ".join(str(g.error).rstrip(".") for g in gaps) + ".")
