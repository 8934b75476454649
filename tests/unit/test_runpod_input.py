"""Bad input to the runpod tasks, through the real `fab` command line: one sentence naming the flag, exit 1,
no traceback, and before any connection (the host here is a closed port that would time out)."""

from __future__ import annotations

import socket
import time

import pytest

from tasks import runpod as runpod_tasks
from tests.harness.fab import run_fab


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env(port: int, **extra: str) -> dict[str, str]:
    # 198.51.100.1 is TEST-NET-2: nothing answers, so a connection attempt would wait for the timeout
    return {"RUNPOD_HOST": "198.51.100.1", "RUNPOD_PORT": str(port), "SSH_CONNECT_TIMEOUT": "30",
            "REMOTE_DIR": "/workspace/run", **extra}


def one_sentence(result, expected: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (["status", "--tail=ten"], "--tail must be a whole number, got 'ten'."),
    (["logs", "--tail=-"], "--tail must be a whole number, got '-'."),
    (["stop", "--timeout=soon"],
     "--timeout must be a duration such as 90s, 15m, 2h or 3d (a bare number is seconds), got 'soon'."),
    (["stop", "--timeout=0"], "--timeout must be at least 1 s, got '0'."),
    (["deploy-runpod", "--wait=5x"],
     "--wait must be a duration such as 90s, 15m, 2h or 3d (a bare number is seconds), got '5x'."),
    (["deploy-runpod", "--nodes=two"], "--nodes must be a whole number, got 'two'."),
    (["sync-from-runpod", "--method=scp"], "--method must be auto, rsync or sftp, got 'scp'."),
])
def test_a_flag_that_is_not_a_number_is_one_sentence(args: list[str], expected: str, closed_port: int) -> None:
    started = time.monotonic()
    one_sentence(run_fab(*args, env=env(closed_port), timeout=120), expected)
    assert time.monotonic() - started < 25  # no connection was tried


@pytest.mark.parametrize("path", ["../etc", "/etc", "lightning_logs/../../x", "a\nb"])
def test_a_path_that_leaves_remote_dir_is_refused_before_connecting(path: str, closed_port: int) -> None:
    started = time.monotonic()
    result = run_fab("sync-from-runpod", f"--path={path}", env=env(closed_port), timeout=120)
    one_sentence(result, "REMOTE_DIR")
    assert time.monotonic() - started < 25  # the 30 s SSH timeout never started


def test_a_remote_dir_with_a_control_character_is_refused_in_one_sentence(closed_port: int) -> None:
    one_sentence(run_fab("sync-from-runpod", env=env(closed_port, REMOTE_DIR="/workspace/r\tun"), timeout=120),
                 "REMOTE_DIR from environment holds a control character; give a plain absolute folder (got "
                 "'/workspace/r\\tun')")


@pytest.mark.parametrize("task", runpod_tasks.ns.tasks.values(), ids=lambda t: t.name)
def test_no_runpod_flag_has_a_numeric_default_that_invoke_would_cast_with_a_traceback(task) -> None:
    for arg in task.get_arguments():
        assert arg.kind in (str, bool, list), f"{task.name} --{arg.name} is cast as {arg.kind.__name__}"
