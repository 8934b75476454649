"""The native runtime's supervisor as real processes on this machine (what runs on a pod).

Commands are tiny shell or python one-liners, so every test takes a second or two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.pod import install_supervisor
from tests.harness.waiting import wait_until


@pytest.fixture
def run_dir(tmp_path: Path):
    """A REMOTE_DIR with the supervisor installed as deploy installs it; whatever it started is ended."""
    install_supervisor(tmp_path / ".gpu-deploy")
    yield tmp_path
    supervisor(tmp_path, "stop", "--timeout", "1")


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def configure(run_dir: Path, command: list[str], **options) -> None:
    config = {"command": command, "backoff": 0.1, "max_backoff": 0.2, **options}
    (run_dir / ".gpu-deploy" / "run.json").write_text(json.dumps(config))


def supervisor(run_dir: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(run_dir / ".gpu-deploy" / "supervisor.py"), args[0],
                          "--dir", str(run_dir), *args[1:]], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def state(run_dir: Path) -> dict:
    return supervisor(run_dir, "status")


def test_start_detaches_and_returns_while_the_command_runs(run_dir: Path) -> None:
    configure(run_dir, ["sh", "-c", "echo hello from $GREETING; sleep 30"], env={"GREETING": "config"})
    (run_dir / ".env").write_text("GREETING='dotenv'\nFROM_DOTENV='1'\n")
    started = time.monotonic()
    result = supervisor(run_dir, "start")
    assert time.monotonic() - started < 5 and result["log_offset"] == 0
    wait_until(lambda: "hello from config" in (run_dir / "train.log").read_text(), 10, "the command's output", interval=0.1)
    assert state(run_dir)["status"] == "running" and state(run_dir)["alive"]
    assert supervisor(run_dir, "start")["error"].startswith("already running")


def test_a_crash_is_restarted_until_the_limit(run_dir: Path) -> None:
    configure(run_dir, ["sh", "-c", "echo attempt; exit 3"], max_restarts=2)
    supervisor(run_dir, "start")
    final = wait_until(lambda: (lambda s: s if s.get("status") == "failed" else None)(state(run_dir)), 20,
                       "the supervisor to give up")
    assert final["restarts"] == 2 and final["exit_code"] == 3 and not final["alive"]
    assert (run_dir / "train.log").read_text().count("attempt\n") == 3


def test_an_exit_0_ends_the_run(run_dir: Path) -> None:
    configure(run_dir, ["sh", "-c", "exit 0"])
    supervisor(run_dir, "start")
    final = wait_until(lambda: (lambda s: s if not s["alive"] else None)(state(run_dir)), 10, "the run to end", interval=0.1)
    assert final["status"] == "exited" and final["restarts"] == 0


def test_stop_sends_sigterm_and_kills_the_group_after_the_deadline(run_dir: Path) -> None:
    # The command ignores SIGTERM and has a child of its own: both must be gone after the deadline.
    configure(run_dir, ["sh", "-c", "trap '' TERM; sleep 300 & echo $! > child.pid; wait"])
    supervisor(run_dir, "start")
    child = int(wait_until(lambda: (run_dir / "child.pid").exists() and (run_dir / "child.pid").read_text().strip(),
                           10, "the command's child"))
    started = time.monotonic()
    assert supervisor(run_dir, "stop", "--timeout", "1") == {"stopped": True}
    assert time.monotonic() - started < 10
    assert state(run_dir)["status"] == "stopped"
    assert "killing the entrypoint's process group" in (run_dir / "train.log").read_text()
    assert wait_until(lambda: gone(child), 5, "the command's child to be killed", interval=0.1)


def test_a_graceful_command_stops_on_sigterm(run_dir: Path) -> None:
    configure(run_dir, [sys.executable, "-c", "import signal, sys, time\n"
                        "signal.signal(signal.SIGTERM, lambda *a: (print('flushing', flush=True), sys.exit(143)))\n"
                        "print('ready', flush=True)\ntime.sleep(300)"])
    supervisor(run_dir, "start")
    wait_until(lambda: "ready" in (run_dir / "train.log").read_text(), 10, "the command", interval=0.1)
    supervisor(run_dir, "stop", "--timeout", "30")
    log = (run_dir / "train.log").read_text()
    assert "flushing" in log and "stopped: the entrypoint exited with 143" in log


def test_a_kill_9_of_the_command_restarts_it(run_dir: Path) -> None:
    configure(run_dir, ["sh", "-c", "echo up; sleep 300"])
    supervisor(run_dir, "start")
    first = int(wait_until(lambda: (run_dir / ".gpu-deploy" / "train.pid").exists()
                           and (run_dir / ".gpu-deploy" / "train.pid").read_text().strip(), 10, "train.pid"))
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: (run_dir / "train.log").read_text().count("up\n") == 2, 10, "the restart", interval=0.1)
    now = state(run_dir)
    assert now["status"] == "running" and now["restarts"] == 1 and now["child"] != first


# --------------------------------------------------------------------------- the training outlives its supervisor

GRACEFUL = ("import signal, subprocess, sys, time\n"
            "worker = subprocess.Popen(['sleep', '300'])  # a data worker: a leftover unless the group is killed\n"
            "open('worker.pid', 'w').write(str(worker.pid))\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('flushing', flush=True), sys.exit(143)))\n"
            "print('ready', flush=True)\ntime.sleep(300)")


def kill_the_supervisor(run_dir: Path) -> int:
    """kill -9 the daemon once the command runs; the command's pid."""
    wait_until(lambda: "ready" in (run_dir / "train.log").read_text() or "up" in (run_dir / "train.log").read_text(),
               10, "the command", interval=0.1)
    child = state(run_dir)["child"]
    daemon = int((run_dir / ".gpu-deploy" / "supervisor.pid").read_text())
    os.kill(daemon, signal.SIGKILL)
    wait_until(lambda: gone(daemon), 5, "the supervisor to die", interval=0.05)
    return child


def test_status_reports_a_training_whose_supervisor_was_killed(run_dir: Path) -> None:
    configure(run_dir, ["sh", "-c", "echo up; sleep 300"])
    supervisor(run_dir, "start")
    child = kill_the_supervisor(run_dir)
    now = state(run_dir)
    assert now["status"] == "orphaned" and not now["alive"]
    assert now["training"] == {"running": True, "pid": child}


def test_stop_stops_the_training_after_its_supervisor_was_killed(run_dir: Path) -> None:
    configure(run_dir, [sys.executable, "-c", GRACEFUL])
    supervisor(run_dir, "start")
    child = kill_the_supervisor(run_dir)
    worker = int(wait_until(lambda: (run_dir / "worker.pid").exists() and (run_dir / "worker.pid").read_text(), 10,
                            "the worker"))
    assert supervisor(run_dir, "stop", "--timeout", "30") == {"stopped": True, "orphan": child}
    assert gone(child) and wait_until(lambda: gone(worker), 5, "the worker to be killed", interval=0.1)
    log = (run_dir / "train.log").read_text()
    assert "stopping a training whose supervisor is gone" in log and "flushing" in log
    after = state(run_dir)
    assert after["status"] == "stopped" and after["training"] == {"running": False, "pid": None}


def test_stop_kills_an_orphaned_training_that_ignores_sigterm_at_the_deadline(run_dir: Path) -> None:
    configure(run_dir, ["sh", "-c", "trap '' TERM; echo up; sleep 300 & echo $! > child.pid; wait"])
    supervisor(run_dir, "start")
    child = kill_the_supervisor(run_dir)
    grandchild = int(wait_until(lambda: (run_dir / "child.pid").exists() and (run_dir / "child.pid").read_text(),
                                10, "the command's child"))
    started = time.monotonic()
    assert supervisor(run_dir, "stop", "--timeout", "1")["stopped"]
    assert time.monotonic() - started < 8
    assert gone(child) and wait_until(lambda: gone(grandchild), 5, "the command's child", interval=0.1)
    assert "the stop deadline passed: killing the training's process group" in (run_dir / "train.log").read_text()


def test_start_does_not_start_a_second_training_beside_an_orphaned_one(run_dir: Path) -> None:
    configure(run_dir, ["sh", "-c", "echo up; sleep 300"])
    supervisor(run_dir, "start")
    child = kill_the_supervisor(run_dir)
    refused = supervisor(run_dir, "start")
    assert refused["error"] == (f"a training started here earlier still runs without its supervisor (pid {child}); "
                                "stop it first (fab stop), then start again")
    assert not gone(child) and (run_dir / "train.log").read_text().count("up\n") == 1
    assert not (run_dir / ".gpu-deploy" / "supervisor.pid").exists() or not state(run_dir)["alive"]
    supervisor(run_dir, "stop", "--timeout", "5")
    assert gone(child) and "pid" in supervisor(run_dir, "start")  # once stopped, a start goes ahead
    wait_until(lambda: (run_dir / "train.log").read_text().count("up\n") == 2, 10, "the new run", interval=0.1)


def test_start_refuses_an_env_file_in_another_dialect(run_dir: Path) -> None:
    configure(run_dir, ["sh", "-c", "exit 0"])
    (run_dir / ".env").write_text("A='1'\nB=unquoted\n")
    refused = supervisor(run_dir, "start")
    assert refused["error"] == (f"{run_dir}/.env: line 2 is not KEY='value' as gpu-deploy writes it; deploy again "
                                "to rewrite it")
    assert not (run_dir / ".gpu-deploy" / "supervisor.pid").exists()


def test_the_command_gets_the_values_the_writer_wrote(run_dir: Path) -> None:
    from deploy.hosts.envfile import render_env
    from tests.unit.test_envship import ACCEPTED, keyed

    (run_dir / ".env").write_text(render_env(keyed(ACCEPTED)))
    configure(run_dir, [sys.executable, "-c", "import json, os\n"
                        "json.dump({k: v for k, v in os.environ.items() if k.startswith('V_')}, open('seen.json', 'w'))"])
    supervisor(run_dir, "start")
    seen = wait_until(lambda: (run_dir / "seen.json").exists() and (run_dir / "seen.json").read_text(), 10, "the env")
    assert json.loads(seen) == keyed(ACCEPTED)
