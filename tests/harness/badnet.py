"""Bad places for an endpoint to be, on loopback: for the tests that every task fails fast and says why.

* :func:`closed_port`: a port nothing listens on (connect is refused at once);
* :class:`Blackhole`: a port that accepts connections and never sends a byte;
* :class:`Answering`: an HTTP server that answers every request with one status and body: a web page
  (``html()``: an endpoint that is not S3 or RunPod's API) or ``401`` (something in front that wants
  its own login);
* :data:`UNRESOLVABLE`: a host name that never resolves (``.invalid`` is reserved for that, RFC 2606).

Example::

    with Blackhole() as hole:
        run_fab("runs", env={"AWS_ENDPOINT_URL": hole.url})
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from deploy.dev.embedded import free_port

UNRESOLVABLE = "nothing.invalid"

PAGE = (b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Welcome</title></head>\n'
        b"<body><p>It works: this is a web server.</p></body></html>\n")
UNAUTHORIZED = b'{"error": "Unauthorized"}\n'


def closed_port() -> int:
    """A loopback port nothing listens on (free a moment ago; nothing here takes it)."""
    return free_port()


class Blackhole:
    """A loopback port that accepts every connection and never answers (a stuck server, a bad proxy)."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="blackhole", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        """How many connections it holds: something is waiting on it."""
        return len(self._held)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(conn)  # held open, never read or written

    def __enter__(self) -> "Blackhole":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        for conn in self._held:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(self.server.status)
        self.send_header("Content-Type", self.server.content_type)
        if self.server.status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="login"')
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.server.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status, self.body, self.content_type = status, body, content_type
        super().__init__(("127.0.0.1", 0), _Handler)


class Answering:
    """An HTTP server on a free loopback port that answers every request alike."""

    def __init__(self, status: int = 200, body: bytes = PAGE, content_type: str = "text/html; charset=utf-8") -> None:
        self._server = _Server(status, body, content_type)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"answering-{status}", daemon=True)

    @classmethod
    def html(cls) -> "Answering":
        return cls(200, PAGE, "text/html; charset=utf-8")

    @classmethod
    def unauthorized(cls) -> "Answering":
        return cls(401, UNAUTHORIZED, "application/json")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Answering":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


GOOD_API = (b'{"data": {"myself": {"id": "user-fake", "pods": []}, "gpuTypes": ['
            b'{"id": "NVIDIA L40S", "displayName": "L40S", "memoryInGb": 48, "secureCloud": true, '
            b'"communityCloud": true, "securePrice": 0.99, "communityPrice": 0.79}, '
            b'{"id": "NVIDIA RTX A6000", "displayName": "RTX A6000", "memoryInGb": 48, "secureCloud": true, '
            b'"communityCloud": true, "securePrice": 0.49, "communityPrice": 0.33}]}}')
"""One answer for every query a task asks first: who the key belongs to, no pods, the default GPU types' prices."""


def good_api() -> Answering:
    """A stand-in for RunPod's API that answers (for tests whose bad part is something else)."""
    return Answering(200, GOOD_API, "application/json")
