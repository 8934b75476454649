"""The pod's own deadline (deploy/remote/backstop.py), run here as a pod would run it, against a local stand-in
for RunPod's GraphQL endpoint: it ends its own pod at the deadline with only what the pod's environment holds."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.waiting import wait_until

PROGRAM = Path(__file__).resolve().parents[2] / "deploy" / "remote" / "backstop.py"
POD_KEY = "pod-scoped-" + os.urandom(6).hex()


class Api(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, failures: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict]] = []
        self.failures = failures


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Api

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.headers.get("Authorization", ""), body))
        if self.server.failures:
            self.server.failures -= 1
            answer = {"errors": [{"message": "Something went wrong. Please try again later."}]}
        else:
            answer = {"data": {"podTerminate": None}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api() -> Iterator[Api]:
    server = Api()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def backstop(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    return subprocess.run([sys.executable, str(PROGRAM), *args], capture_output=True, text=True, timeout=30,
                          env={**base, **(env or {})})


def pod_env(api: Api, pod: str = "pod-7") -> dict[str, str]:
    return {"RUNPOD_POD_ID": pod, "RUNPOD_API_KEY": POD_KEY,
            "RUNPOD_API_BASE_URL": f"http://127.0.0.1:{api.server_address[1]}"}


def test_at_its_deadline_the_pod_terminates_itself_with_its_own_key(api: Api, tmp_path: Path) -> None:
    armed = backstop("arm", "--dir", str(tmp_path), "--deadline", f"{time.time() + 1:.0f}", "--slack", "0",
                     env=pod_env(api))
    answer = json.loads(armed.stdout)
    assert armed.returncode == 0 and answer["armed"] and answer["pod"] == "pod-7"
    wait_until(lambda: api.requests, timeout=30, what="the terminate request")
    auth, body = api.requests[0]
    assert auth == f"Bearer {POD_KEY}" and 'podTerminate(input: {podId: "pod-7"})' in body["query"]
    log = (tmp_path / ".gpu-deploy" / "backstop.log").read_text()
    assert "deadline reached" in log and POD_KEY not in log
    config = (tmp_path / ".gpu-deploy" / "backstop.json").read_text()
    assert POD_KEY not in config  # the key stays in the pod's environment: no file, no argument


def test_a_refused_terminate_is_retried_until_runpod_takes_it(tmp_path: Path, monkeypatch) -> None:
    sys.path.insert(0, str(PROGRAM.parent))
    try:
        import backstop as program  # the file as the pod runs it
    finally:
        sys.path.pop(0)
    server = Api(failures=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / ".gpu-deploy").mkdir()
        monkeypatch.setattr(program, "RETRY", 0.01)
        program.at_deadline(str(tmp_path), pod_env(server))
        assert len(server.requests) == 3
        assert (tmp_path / ".gpu-deploy" / "backstop.log").read_text().count("terminate failed") == 2
    finally:
        server.shutdown()
        server.server_close()


def test_re_arming_moves_the_deadline_of_the_running_daemon(api: Api, tmp_path: Path) -> None:
    first = json.loads(backstop("arm", "--dir", str(tmp_path), "--deadline", f"{time.time() + 3600:.0f}",
                                env=pod_env(api)).stdout)
    again = json.loads(backstop("arm", "--dir", str(tmp_path), "--deadline", f"{time.time() + 7200:.0f}",
                                env=pod_env(api)).stdout)
    status = json.loads(backstop("status", "--dir", str(tmp_path)).stdout)
    try:
        assert again["again"] and again["pid"] == first["pid"] and status["pid"] == first["pid"]
        assert status["deadline"] == again["deadline"] and api.requests == []
    finally:
        os.kill(first["pid"], 9)


def test_a_host_without_runpods_variables_says_it_cannot_end_itself(tmp_path: Path) -> None:
    result = backstop("arm", "--dir", str(tmp_path), "--deadline", "1")
    assert result.returncode == 3 and json.loads(result.stdout) == {
        "armed": False, "why": "RUNPOD_POD_ID and RUNPOD_API_KEY are not in the pod's environment, so the pod "
                               "cannot end itself"}


def test_the_pods_variables_are_read_from_the_container_environment_format() -> None:
    sys.path.insert(0, str(PROGRAM.parent))
    try:
        import backstop as program
    finally:
        sys.path.pop(0)
    raw = b"PATH=/usr/bin\0RUNPOD_POD_ID=abc\0RUNPOD_API_KEY=k1\0OTHER=x\0"
    assert program.parse_environ(raw) == {"RUNPOD_POD_ID": "abc", "RUNPOD_API_KEY": "k1"}
    assert program.parse_environ(b"export RUNPOD_POD_ID='abc'\nexport HOME=/root\n", b"\n") == {"RUNPOD_POD_ID": "abc"}
