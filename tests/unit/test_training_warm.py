"""Which commands a warm process may run, and when the running entrypoint may be reloaded (pure or local)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from deploy.training.entrypoint import run
from deploy.training.warmstart import Warm
from deploy.training.reload import (STATE_FILE, EntrypointState, environment_digest, prewarm, refusal, reload,
                                   start_ticks)
from deploy.training.warm import command_argv

PY = "/work/run/.venv/bin/python"


def test_only_this_interpreter_running_a_module_or_a_script_starts_warm() -> None:
    assert command_argv(PY, ["python", "-m", "toytrain", "fit"], PY) == ["-m", "toytrain", "fit"]
    assert command_argv(PY, [PY, "-u", "train.py", "--lr=1"], PY) == ["train.py", "--lr=1"]
    assert command_argv(PY, ["python", "-m", "toytrain"], "/usr/bin/python") is None  # another interpreter
    assert command_argv(PY, ["python", "-c", "import x"], PY) is None  # code on the command line: a cold start
    assert command_argv(PY, ["python", "-X", "dev", "train.py"], PY) is None  # interpreter options it cannot apply
    assert command_argv(PY, ["python", "-m"], PY) is None
    assert command_argv(PY, ["bash", "train.sh"], None) is None
    assert command_argv(PY, [], PY) is None


def test_the_entrypoint_state_is_kept_only_under_a_deploy(tmp_path: Path) -> None:
    outside = EntrypointState(tmp_path)
    outside.launched()
    assert not (tmp_path / STATE_FILE).exists()
    (tmp_path / ".gpu-deploy").mkdir()
    state = EntrypointState(tmp_path)
    state.launched()
    written = json.loads((tmp_path / STATE_FILE).read_text())
    assert written["pid"] == os.getpid() and written["ticks"] == start_ticks(os.getpid())
    assert written["generation"] == 1 and written["state"] == "training" and written["signal"] == "SIGUSR2"


def test_a_reload_is_refused_without_signalling_when_it_is_not_safe(tmp_path: Path) -> None:
    (tmp_path / ".gpu-deploy" / "app" / "deploy").mkdir(parents=True)
    (tmp_path / ".env").write_text("A='1'\n")
    assert reload(tmp_path, 1)["why"].startswith("no .gpu-deploy/entrypoint.json")
    state = EntrypointState(tmp_path)
    state.write("starting")
    body = json.loads((tmp_path / STATE_FILE).read_text())
    assert refusal(tmp_path, body) == "the entrypoint is 'starting', not training"
    state.launched()
    body = json.loads((tmp_path / STATE_FILE).read_text())
    assert refusal(tmp_path, body) is None  # this very process, training, nothing changed
    assert refusal(tmp_path, {**body, "ticks": body["ticks"] + 1}) == "the entrypoint that wrote it is no longer running"
    for changed in (tmp_path / ".env", tmp_path / ".gpu-deploy" / "app" / "deploy" / "new.py"):
        before = environment_digest(tmp_path)
        changed.write_text("B='2'\n")
        assert environment_digest(tmp_path) != before
        assert refusal(tmp_path, body) == "its settings, packages or gpu-deploy's own code changed since it started"
    before = environment_digest(tmp_path)
    (tmp_path / "train.py").write_text("print('new code')\n")  # the project's code is not part of it
    assert environment_digest(tmp_path) == before
    answer = reload(tmp_path, 1)  # the settings changed since this "entrypoint" started: nothing is signalled
    assert answer["reloaded"] is False and answer["signalled"] is False



def test_a_warm_process_runs_a_script_or_a_module_as_python_would(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WARM_IMPORTS", "json")  # the test needs no torch; what is imported ahead does not matter
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job").mkdir()
    show = ("import os, sys\nwith open('out.txt', 'w') as f:\n"
            "    print(os.getpid(), __name__, sys.argv, os.environ.get('EXTRA'), sys.stdout.line_buffering, sys.path[0], file=f)\n")
    (tmp_path / "job" / "train.py").write_text(show + "sys.exit(3)\n")
    (tmp_path / "job" / "__init__.py").write_text("")
    (tmp_path / "job" / "__main__.py").write_text(show)
    for command, code, expected in (
            ([sys.executable, "-u", "job/train.py", "a"], 3,
             f"__main__ ['job/train.py', 'a'] yes True {tmp_path / 'job'}"),
            ([sys.executable, "-m", "job", "fit"], 0,
             f"__main__ ['{tmp_path / 'job' / '__main__.py'}', 'fit'] yes False {tmp_path}")):
        warm = Warm(command)
        warm.prepare()
        assert warm.ready(command) and warm.process is not None
        pid = warm.process.pid
        assert run(command, {"EXTRA": "yes"}, warm) == (code, False)
        assert warm.process is None and (tmp_path / "out.txt").read_text().strip() == f"{pid} {expected}"
    cold = Warm([sys.executable, "-c", "pass"])
    cold.prepare()
    assert cold.process is None  # nothing to gain: no warm process is started


EXITING = """
import atexit, sys, threading
log = open("log.txt", "w")                      # never closed: its buffer is written when the process ends
log.write("buffered line\\n")
text = open("handler.txt", "w")
atexit.register(lambda: text.write("atexit ran\\n"))
main = threading.main_thread()                  # this thread writes only once the main thread has ended
threading.Thread(target=lambda: (main.join(), open("thread.txt", "w").write("thread done\\n"))).start()
sys.exit(CODE)
"""


def test_a_warm_training_ends_as_python_would_without_its_teardown(tmp_path: Path, monkeypatch, capfd) -> None:
    monkeypatch.setenv("WARM_IMPORTS", "json")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    monkeypatch.chdir(tmp_path)
    for code, status in (("4", 4), ("None", 0), ("-1", 255), ("'cannot go on'", 1)):
        (tmp_path / "job.py").write_text(EXITING.replace("CODE", code))
        command = [sys.executable, "job.py"]
        warm = Warm(command)
        warm.prepare()
        assert run(command, {}, warm) == (status, False)
        assert (tmp_path / "log.txt").read_text() == "buffered line\n"       # open files closed, buffers written
        assert (tmp_path / "handler.txt").read_text() == "atexit ran\n"      # atexit handlers ran, before that
        assert (tmp_path / "thread.txt").read_text() == "thread done\n"      # threads that are not daemons joined
    assert "cannot go on" in capfd.readouterr().err                           # SystemExit's message, as Python prints it


def test_a_warm_process_started_ahead_of_a_reload_is_kept_by_the_reload_and_dropped_when_none_comes(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WARM_IMPORTS", "json")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    command = [sys.executable, "-m", "job"]
    ahead = Warm(command)
    ahead.prepare(hold=0.0)  # a deploy connected; its reload did not come in time
    process = ahead.process
    assert process is not None and ahead.expires is not None
    ahead.expire()
    assert ahead.process is None and ahead.expires is None and process.poll() is not None  # killed and reaped
    kept = Warm(command)
    kept.prepare(hold=0.0)
    waiting = kept.process
    assert waiting is not None  # started while a training runs: it names no training until it runs one
    from deploy.dev.waiting import wait_until

    shown = wait_until(lambda: Path(f"/proc/{waiting.pid}/cmdline").read_bytes(), 10, "its command line")  # set at exec
    assert b"deploy.training.warm\0--standby\0" in shown
    kept.prepare()  # the reload came: the same process, no longer dropped
    assert kept.process is waiting and kept.expires is None
    kept.expire()
    assert kept.process is waiting and waiting is not None and waiting.poll() is None
    kept.close()
    assert waiting.poll() is not None


def test_warming_ahead_asks_only_an_entrypoint_that_may_be_reloaded_and_knows_the_signal(tmp_path: Path) -> None:
    (tmp_path / ".gpu-deploy").mkdir()
    assert prewarm(tmp_path)["why"].startswith("no .gpu-deploy/entrypoint.json")
    state = EntrypointState(tmp_path)
    state.launched()
    body = json.loads((tmp_path / STATE_FILE).read_text())
    assert body["prewarm"] == "SIGUSR1"
    old = {k: v for k, v in body.items() if k != "prewarm"}  # an entrypoint of an earlier release: SIGUSR1 kills it
    (tmp_path / STATE_FILE).write_text(json.dumps(old))
    assert prewarm(tmp_path) == {"prewarmed": False, "why": "the entrypoint predates warming ahead"}
    (tmp_path / STATE_FILE).write_text(json.dumps({**body, "state": "reloading"}))
    assert prewarm(tmp_path) == {"prewarmed": False, "why": "the entrypoint is 'reloading', not training"}


def test_a_training_that_has_run_a_while_gets_the_next_reloads_process_standing_by_under_its_own_name(
        tmp_path: Path, monkeypatch) -> None:
    import threading

    from deploy.dev.waiting import wait_until
    from deploy.training.warmstart import Reloads

    monkeypatch.setenv("WARM_STANDBY", "0")  # at once (10 s by default)
    monkeypatch.setenv("WARM_IMPORTS", "json")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    go, shown = tmp_path / "go", tmp_path / "cmdline"
    script = tmp_path / "train.py"
    script.write_text(f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n"
                      f"open({str(shown)!r}, 'wb').write(open('/proc/self/cmdline', 'rb').read())\n")
    command = [sys.executable, str(script)]  # a script: a command a warm process can run
    warm = Warm(command)
    seen: list[bytes] = []

    def release() -> None:  # the training ends once its successor's process stands by (or after 30 s, failing)
        try:
            process = wait_until(lambda: warm.process, timeout=30, what="the standby process")
            seen.append(Path(f"/proc/{process.pid}/cmdline").read_bytes())
        finally:
            go.write_text("")

    helper = threading.Thread(target=release)
    helper.start()
    try:
        assert run(command, {}, warm, Reloads()) == (0, False)
        helper.join()
        assert warm.ready(command) and warm.expires is None  # kept for the next start, not dropped after a while
        # Standing by, it names no training (ps and pgrep -f train.py see one training, not two) ...
        assert b"deploy.training.warm\0--standby\0" in seen[0] and str(script).encode() not in seen[0]
        standby = warm.process
        assert standby is not None
        go.unlink()
        go.write_text("")
        # ... and once it runs the next command, it shows it as every warm-started training does.
        assert run([*command, "--resumed"], {}, warm) == (0, False)
        words = shown.read_bytes().rstrip(b"\0").split(b"\0")
        assert words == [os.fsencode(w) for w in (sys.executable, "-m", "deploy.training.warm", "--", *command,
                                                    "--resumed")]
    finally:
        warm.close()


def test_the_standby_is_configured_in_seconds_or_off(monkeypatch, capsys) -> None:
    from deploy.training.warmstart import STANDBY_AFTER, standby_after

    for value, expected in (("", STANDBY_AFTER), ("2.5", 2.5), ("off", None), ("-3", 0.0)):
        monkeypatch.setenv("WARM_STANDBY", value)
        assert standby_after() == expected
    monkeypatch.setenv("WARM_STANDBY", "soon")
    assert standby_after() == STANDBY_AFTER
    assert "WARM_STANDBY='soon' is not a number of seconds or off" in capsys.readouterr().out
