"""`fab status` and `fab logs` against a host that writes terminal escapes everywhere, on the real sshd: a
native deploy whose supervisor reports a hostile status, whose log and heartbeat are hostile too.

Nothing the host wrote reaches the terminal raw; `fab logs --follow` shows a new line while it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.fab import FAB, REPO
from tests.harness.waiting import wait_until

HOSTILE = "\x1b[31m\x1b]0;owned\x07\x1b[2J\x08\x9b1m\u202e"
SUPERVISOR = """
import json, sys
print(json.dumps({"alive": True, "status": "running%s", "started_at": "2026-11-30T06:00:00Z", "restarts": 0,
                  "training": {"running": True, "pid": 4242}}))
"""
LOG = ("gpu-deploy: training started\n"
       f"\x1b]0;owned\x07entrypoint: resuming{HOSTILE} from last.ckpt\n"
       "Epoch 0:  10%|#         | 1/10\rEpoch 0:  50%|#####     | 5/10\rEpoch 0: 100%|##########| 10/10\n"
       "step\t7\tloss 0.25\r\n")


def fab_env(ssh_server, root: Path) -> dict[str, str]:
    return {"RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(ssh_server.port), "RUNPOD_USER": ssh_server.user,
            "RUNPOD_SSH_KEY": str(ssh_server.client_key), "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts),
            "REMOTE_DIR": str(root)}


@pytest.fixture
def hostile_host(ssh_server) -> Iterator[Path]:
    root = Path(f"/tmp/gpu-deploy hostile {uuid.uuid4().hex[:8]}")
    (root / ".gpu-deploy").mkdir(parents=True)
    (root / ".gpu-deploy" / "supervisor.py").write_text(SUPERVISOR % json.dumps(HOSTILE)[1:-1])
    (root / "train.log").write_text(LOG)
    (root / "lightning_logs").mkdir()
    (root / "lightning_logs" / "heartbeat.json").write_text(json.dumps({
        "format": 1, "at": "2026-11-30T06:00:00Z", "host": f"gpu{HOSTILE}", "step": 7,
        "metrics": {f"loss{HOSTILE}": 0.25}}))
    yield root
    for pid in pids_with(str(root / "train.log")):  # a `tail -F` a follow left behind on the host
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def pids_with(argument: str) -> list[int]:
    """Processes on this machine (the host) with ``argument`` in their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if argument.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def assert_clean(text: str, tabs: bool = False) -> None:
    """Nothing a terminal would act on: no control but newline (and tab in logs), no C1, no bidi override."""
    allowed = "\n\t" if tabs else "\n"
    bad = [hex(ord(ch)) for ch in text if (ord(ch) < 32 and ch not in allowed) or 0x7f <= ord(ch) <= 0x9f
           or ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"]
    assert bad == [], f"raw characters reached the terminal: {sorted(set(bad))}"


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FAB, "--search-root", str(REPO), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, **env}, stdin=subprocess.DEVNULL)


def test_status_shows_the_host_s_words_without_its_escapes(ssh_server, hostile_host: Path, tmp_path: Path) -> None:
    shown = run("status", env=fab_env(ssh_server, hostile_host), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert_clean(shown.stdout, tabs=True)  # tabs only inside the log lines
    lines = shown.stdout.splitlines()
    assert any(line.startswith("service     running1m") for line in lines), shown.stdout
    assert any(line.startswith("progress    step 7, loss") for line in lines), shown.stdout
    assert "  entrypoint: resuming1m from last.ckpt" in lines
    assert not any("Epoch 0:" in line for line in lines)  # status leaves progress bars to the heartbeat
    as_json = run("status", "--json", env=fab_env(ssh_server, hostile_host), cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    assert all(32 <= ord(ch) < 127 or ch == "\n" for ch in as_json.stdout)
    assert json.loads(as_json.stdout)[0]["service"]["status"] == f"running{HOSTILE}"  # JSON keeps the data


@pytest.mark.parametrize("body", ["[1, 2]", '{"at": "2026-11-30T06:00:00Z", "metrics": [1]}',
                                  '{"at": "2026-11-30T06:00:00Z", "eta_seconds": 1e999}'])
def test_status_says_so_when_the_heartbeat_file_is_not_a_heartbeat(ssh_server, hostile_host: Path, tmp_path: Path,
                                                                    body: str) -> None:
    (hostile_host / "lightning_logs" / "heartbeat.json").write_text(body)
    shown = run("status", env=fab_env(ssh_server, hostile_host), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr
    assert "note        the heartbeat file on the host (lightning_logs/heartbeat.json) is not a heartbeat" \
        in shown.stdout, shown.stdout


def test_logs_print_the_log_clean_with_each_progress_bar_in_its_last_state(ssh_server, hostile_host: Path,
                                                                          tmp_path: Path) -> None:
    shown = run("logs", env=fab_env(ssh_server, hostile_host), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert_clean(shown.stdout, tabs=True)
    assert shown.stdout.splitlines()[1:] == ["gpu-deploy: training started", "entrypoint: resuming1m from last.ckpt",
                                             "Epoch 0: 100%|##########| 10/10", "step\t7\tloss 0.25"]


def test_logs_follow_streams_new_lines_clean_as_they_come(ssh_server, hostile_host: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen([FAB, "--search-root", str(REPO), "logs", "--follow", "--tail=2"], cwd=tmp_path,
                            env={**os.environ, **fab_env(ssh_server, hostile_host)}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: "step\t7\tloss 0.25\n" in seen, 60, "the last lines of the log")
        with open(hostile_host / "train.log", "a") as log:
            log.write(f"epoch 1 done{HOSTILE}\x07\n")
        wait_until(lambda: "epoch 1 done1m\n" in seen, 60, "the new line, cleaned, while fab still follows")
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # Ctrl-C ends --follow
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert_clean("".join(seen), tabs=True)
    assert "Traceback" not in proc.stderr.read()
    with open(hostile_host / "train.log", "a") as log:  # the host's tail notices its reader is gone on a write
        log.write("after\n")
    wait_until(lambda: not pids_with(str(hostile_host / "train.log")), 30, "the host's tail -F to end")


def test_status_on_several_hosts_shows_every_host_that_answers_then_names_the_one_that_did_not(
        ssh_server, hostile_host: Path, tmp_path: Path) -> None:
    from deploy.dev.embedded import free_port

    closed = free_port()  # nothing listens there
    good = f"{ssh_server.user}@127.0.0.1:{ssh_server.port}"
    shown = run("status", f"--hosts={good},{ssh_server.user}@127.0.0.1:{closed}",
                env=fab_env(ssh_server, hostile_host), cwd=tmp_path)
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert any(line.startswith("service     running1m") for line in shown.stdout.splitlines()), shown.stdout
    [sentence] = shown.stderr.strip().splitlines()
    assert sentence.startswith(f"Error: 1 of 2 hosts failed: {ssh_server.user}@127.0.0.1:{closed}: "), sentence
