"""A store that breaks S3's promise about conditional writes: an HTTP proxy in front of moto's server.

moto 5 (5.2.5 here) honours both conditions on PutObject, as AWS does: ``If-None-Match: *`` on an
existing key and ``If-Match`` with a stale ETag get 412 PreconditionFailed (``If-Match`` on a missing
key gets 404 NoSuchKey). S3-compatible stores differ, so tests need the other kinds of store too:

* ``"ignore"``: ``If-Match`` / ``If-None-Match`` are dropped from writes, so the store silently
  ignores them and every conditional write goes through;
* ``"refuse"``: a write carrying either header is answered 501 NotImplemented with S3's XML error
  body, as stores without the feature answer; nothing is forwarded;
* ``"pass"``: every request forwarded unchanged (checks the proxy itself);
* ``"html"``: every request answered 200 with a web page, nothing forwarded: an endpoint that is not S3.

"Writes" are PUT, POST and DELETE. A GET keeps its ``If-Match``: stores without conditional writes
still honour HTTP's conditional GET, and s3transfer sends ``If-Match`` on the ranged GETs of every
multipart download, which must keep working through the proxy.

Everything else is forwarded byte for byte: the Host header, the Authorization header and the body
(streamed in 64 KiB pieces both ways, never held whole). Only hop-by-hop headers (Connection,
Expect, Transfer-Encoding ...) are not passed on; botocore leaves all of them out of the SigV4
signature, so dropping them changes nothing the signature covers.

The signature: botocore signs every header it sends except that short list, so ``If-Match`` and
``If-None-Match`` are signed headers. In "ignore" mode the request reaches moto with a signed header
missing, and its signature no longer matches; the proxy cannot re-sign without the secret key, and
should not (a store sees the client's signature). That is fine here because moto's server checks no
signature until authentication is switched on (``/moto-api/reset-auth``, as tests/integration/
test_s3_auth.py does): the session's server accepts the request as it is. Behind a server with
authentication on, "ignore" mode answers SignatureDoesNotMatch to conditional writes (the test
module checks both). "refuse" never forwards a conditional write, and "pass" changes nothing, so
their signatures always hold.

Example::

    with ConditionalWriteProxy(s3_server.endpoint_url, "ignore") as proxy:
        client = boto3.client("s3", endpoint_url=proxy.endpoint_url, ...)

As fixtures (import them into a test module, ``from tests.harness.s3proxy import s3_proxy, proxied_s3_env``):
``s3_proxy("ignore")`` is the endpoint URL of a proxy in that mode in front of the session's S3
server; ``proxied_s3_env`` runs a test once per mode in :data:`STORE_MODES` with the test's own
settings (like ``s3_env``) pointing at that store.
"""

from __future__ import annotations

import http.client
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO
from urllib.parse import urlparse

import pytest

MODES = ("pass", "ignore", "refuse", "html")
STORE_MODES = ("honour", "ignore", "refuse")
"""The kinds of store a test can ask for: moto itself (it honours both conditions), and the proxy's two."""
CONDITIONAL = ("if-match", "if-none-match")
WRITES = ("PUT", "POST", "DELETE")
PIECE = 64 * 1024
# Connection-level headers: never forwarded (each side of the proxy has its own connection). All of
# them are in botocore's list of headers it leaves out of the SigV4 signature.
HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "expect")
NOT_IMPLEMENTED = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code><Message>A header '
                   'you provided implies functionality that is not implemented</Message><Header>{header}</Header>'
                   '<RequestId>{request_id}</RequestId></Error>')
PAGE = (b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Welcome</title></head>\n'
        b"<body><p>It works: this is a web server, not an S3 API.<br></body></html>\n")
"""A page as web servers send it: HTML5, not XML (botocore cannot parse it and calls it a 500)."""


def _copy(source: BinaryIO, write: Callable[[bytes], object], size: int) -> None:
    """Move ``size`` bytes from ``source`` to ``write`` in pieces."""
    while size > 0:
        piece = source.read(min(PIECE, size))
        if not piece:
            raise ConnectionError(f"the body ended {size} bytes early")
        write(piece)
        size -= len(piece)


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    """The data of a ``Transfer-Encoding: chunked`` body, chunk by chunk (trailers are dropped)."""
    while True:
        line = source.readline(65537)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while source.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            return
        remaining = size
        while remaining:
            piece = source.read(min(PIECE, remaining))
            if not piece:
                raise ConnectionError("a chunked body ended early")
            remaining -= len(piece)
            yield piece
        source.readline(65537)  # the CRLF after each chunk


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" answered before the body comes
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815

    # ------------------------------------------------------------------ request side

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _body_pieces(self) -> Iterator[bytes]:
        if self._chunked():
            yield from _chunks(self.rfile)
            return
        size = int(self.headers.get("Content-Length") or 0)
        while size > 0:
            piece = self.rfile.read(min(PIECE, size))
            if not piece:
                raise ConnectionError("the request body ended early")
            size -= len(piece)
            yield piece

    def _handle(self) -> None:
        mode = self.server.mode
        self.server.seen.append((self.command, self.path, tuple(h.lower() for h in self.headers.keys())))
        conditional = [h for h in self.headers.keys() if h.lower() in CONDITIONAL] if self.command in WRITES else []
        if mode == "html":
            self._drain()
            self._answer(200, PAGE, "text/html; charset=utf-8")
        elif mode == "refuse" and conditional:
            self._drain()
            body = NOT_IMPLEMENTED.format(header=conditional[0], request_id=uuid.uuid4().hex[:16].upper())
            self._answer(501, body.encode(), "application/xml")
        else:
            self._forward(drop=CONDITIONAL if mode == "ignore" and conditional else ())

    def _drain(self) -> None:
        for _ in self._body_pieces():
            pass

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.send_header("x-amz-request-id", uuid.uuid4().hex[:16].upper())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, drop: tuple[str, ...]) -> None:
        upstream = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port, timeout=120)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() not in drop:
                    upstream.putheader(name, value)
            chunked = self._chunked()
            if chunked:
                upstream.putheader("Transfer-Encoding", "chunked")
            upstream.endheaders()
            for piece in self._body_pieces():
                upstream.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                upstream.send(b"0\r\n\r\n")
            self._relay(upstream.getresponse())
        finally:
            upstream.close()

    # ------------------------------------------------------------------ response side

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        bodiless = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        rechunk = length is None and not bodiless  # upstream chunked or read-to-close: chunk it again
        if rechunk:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if bodiless:
            return
        if rechunk:
            while piece := response.read(PIECE):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            _copy(response, self.wfile.write, int(length or 0))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, mode: str) -> None:
        parts = urlparse(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.mode = mode
        self.seen: list[tuple[str, str, tuple[str, ...]]] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class ConditionalWriteProxy:
    """A threaded HTTP proxy on a free loopback port in front of ``upstream`` (moto's server), in ``mode``.

    ``seen`` lists every request it got: ``(method, path, lower-case header names)``.
    """

    def __init__(self, upstream: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.upstream, self.mode = upstream, mode
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def seen(self) -> list[tuple[str, str, tuple[str, ...]]]:
        return self._server.seen if self._server is not None else []

    def start(self) -> "ConditionalWriteProxy":
        self._server = _Server(self.upstream, self.mode)
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"s3proxy-{self.mode}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "ConditionalWriteProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def s3_proxy(s3_server) -> Iterator[Callable[[str], str]]:
    """``s3_proxy("ignore")``: the endpoint URL of a proxy in that mode in front of the session's S3 server.

    One proxy per mode for the session, started on first use; the session's bucket is reachable
    through each.
    """
    proxies: dict[str, ConditionalWriteProxy] = {}
    lock = threading.Lock()

    def endpoint(mode: str) -> str:
        with lock:
            if mode not in proxies:
                proxies[mode] = ConditionalWriteProxy(s3_server.endpoint_url, mode).start()
            return proxies[mode].endpoint_url

    yield endpoint
    for proxy in proxies.values():
        proxy.stop()


@dataclass(frozen=True)
class ProxiedEnv:
    """A test's settings for one kind of store: ``mode`` (see :data:`STORE_MODES`) and the `.env` keys."""

    mode: str
    env: dict[str, str]

    @property
    def endpoint_url(self) -> str:
        return self.env["AWS_ENDPOINT_URL"]


@pytest.fixture(params=STORE_MODES)
def proxied_s3_env(request, s3_env: dict[str, str], s3_proxy, monkeypatch: pytest.MonkeyPatch) -> ProxiedEnv:
    """``s3_env`` once per kind of store: moto itself ("honour"), then behind the proxy ("ignore", "refuse").

    The settings are exported to the process environment, like ``s3_env``'s.
    """
    env = dict(s3_env)
    if request.param != "honour":
        env["AWS_ENDPOINT_URL"] = s3_proxy(request.param)
    monkeypatch.setenv("AWS_ENDPOINT_URL", env["AWS_ENDPOINT_URL"])
    return ProxiedEnv(request.param, env)


__all__ = ["MODES", "STORE_MODES", "ConditionalWriteProxy", "ProxiedEnv", "proxied_s3_env", "s3_proxy"]
