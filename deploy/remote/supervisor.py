"""The native runtime's supervisor: keeps the training entrypoint running on a host without Docker.

    python supervisor.py start  --dir REMOTE_DIR      # detach, start, return the daemon's pid
    python supervisor.py stop   --dir REMOTE_DIR [--timeout 120]
    python supervisor.py status --dir REMOTE_DIR

Standard library only: deploy copies this file to ``REMOTE_DIR/.gpu-deploy/supervisor.py`` and runs
it with the run's virtualenv. What it runs comes from ``.gpu-deploy/run.json`` (no secrets: the
command, non-secret environment additions, restart limits). It behaves like the compose service:

- ``start`` detaches (double fork, ``setsid``, stdio away from the SSH channel), so the run outlives
  the SSH session, and returns once the daemon has written ``.gpu-deploy/supervisor.pid``.
- The daemon loads ``REMOTE_DIR/.env`` into the command's environment itself (secrets never travel
  on a command line), starts the command in its own process group in ``REMOTE_DIR``, appends its
  output to ``REMOTE_DIR/train.log`` and keeps the command's pid in ``.gpu-deploy/train.pid``.
- A crash (non-zero exit, a kill -9) is restarted after a short backoff, up to ``max_restarts``
  consecutive times (a run that lasted ``healthy_seconds`` resets the count); an exit 0 ends the run
  (``restart: on-failure``). Leftovers of a crashed command's process group are killed first, so
  two trainings never run at once.
- ``stop`` sends SIGTERM to the daemon, which passes it to the command (the entrypoint forwards it
  to training, whose callbacks flush pending uploads), waits up to the timeout, then kills the
  whole process group.

``.gpu-deploy/state.json`` says what the daemon is doing, for ``fab status``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

META = ".gpu-deploy"
LOG = "train.log"
DEFAULTS = {"command": [sys.executable, "-m", "deploy.training.entrypoint"], "env": {}, "prepend": {},
            "max_restarts": 5, "backoff": 1.0, "max_backoff": 30.0, "healthy_seconds": 600.0,
            "stop_timeout": 120.0, "log_max_bytes": 256 * 1024 * 1024}
RUNNING = ("starting", "running", "restarting", "stopping")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Paths:
    def __init__(self, directory: str) -> None:
        self.dir = os.path.abspath(directory)
        self.meta = os.path.join(self.dir, META)
        self.pid = os.path.join(self.meta, "supervisor.pid")
        self.child = os.path.join(self.meta, "train.pid")
        self.state = os.path.join(self.meta, "state.json")
        self.config = os.path.join(self.meta, "run.json")
        self.stop = os.path.join(self.meta, "stop.json")
        self.env = os.path.join(self.dir, ".env")
        self.log = os.path.join(self.dir, LOG)


def read_json(path: str) -> dict:
    try:
        with open(path) as handle:
            value = json.load(handle)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as a compose ``env_file`` reads them: comments, ``export`` and quotes allowed."""
    values: dict[str, str] = {}
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return values
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if key:
            values[key] = value
    return values


def alive(pid: int | None) -> bool:
    """Whether ``pid`` is a running supervisor (pids are reused after a pod restart: check its command line)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"supervisor.py" in handle.read()
    except OSError:
        return False


def read_pid(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def log_line(paths: Paths, text: str) -> None:
    with open(paths.log, "a") as handle:
        handle.write(f"supervisor: {now()} {text}\n")


class Supervisor:
    """The daemon's loop: run, watch, restart after a crash, stop on SIGTERM."""

    def __init__(self, paths: Paths, config: dict) -> None:
        self.paths = paths
        self.config = {**DEFAULTS, **config}
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self.deadline: float | None = None
        self.restarts = 0
        self.state: dict = {}

    def set_state(self, status: str, **extra: object) -> None:
        self.state = {**self.state, "status": status, "pid": os.getpid(), "restarts": self.restarts,
                      "updated": now(), **extra}
        write_atomic(self.paths.state, json.dumps(self.state))

    def on_term(self, _signum: int, _frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        timeout = read_json(self.paths.stop).get("timeout", self.config["stop_timeout"])
        self.deadline = time.monotonic() + float(timeout)
        if self.child is not None and self.child.poll() is None:
            try:
                self.child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def environment(self) -> dict[str, str]:
        env = {**os.environ, **read_env_file(self.paths.env), **self.config["env"]}
        for name, entries in self.config["prepend"].items():  # PATH, PYTHONPATH: ours first, the host's kept
            rest = env.get(name) or (os.defpath if name == "PATH" else "")
            env[name] = os.pathsep.join([*entries, *([rest] if rest else [])])
        return env

    def kill_group(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def run_once(self, attempt: int) -> tuple[int, float]:
        started = time.monotonic()
        with open(self.paths.log, "ab") as out:
            self.child = subprocess.Popen(self.config["command"], cwd=self.paths.dir, env=self.environment(),
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        write_atomic(self.paths.child, f"{self.child.pid}\n")
        log_line(self.paths, f"started the entrypoint (pid {self.child.pid}, attempt {attempt})")
        self.set_state("running", child=self.child.pid, started_at=now(), exit_code=None)
        if self.stopping:  # a SIGTERM that came while starting
            self.child.send_signal(signal.SIGTERM)
        killed = False
        while True:
            try:
                code = self.child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if self.deadline is not None and time.monotonic() > self.deadline and not killed:
                    log_line(self.paths, "the stop deadline passed: killing the entrypoint's process group")
                    self.kill_group(self.child.pid)
                    killed = True
        self.kill_group(self.child.pid)  # leftovers (training, data workers) of an entrypoint that died
        return code, time.monotonic() - started

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def loop(self) -> int:
        consecutive = 0
        attempt = 1
        while True:
            code, lasted = self.run_once(attempt)
            if self.stopping:
                how = "killed at the deadline" if code == -signal.SIGKILL else f"exited with {code}"
                log_line(self.paths, f"stopped: the entrypoint {how}")
                self.set_state("stopped", exit_code=code)
                return 0
            if code == 0:
                log_line(self.paths, "the run finished (exit 0); not restarting")
                self.set_state("exited", exit_code=0)
                return 0
            consecutive = 1 if lasted >= self.config["healthy_seconds"] else consecutive + 1
            if consecutive > self.config["max_restarts"]:
                log_line(self.paths, f"the entrypoint exited with {code} {consecutive} times in a row; giving up "
                                     "(deploy again to start it)")
                self.set_state("failed", exit_code=code)
                return 1
            delay = min(self.config["max_backoff"], self.config["backoff"] * 2 ** (consecutive - 1))
            log_line(self.paths, f"the entrypoint exited with {code}; restarting in {delay:.0f} s "
                                 f"({consecutive} of {self.config['max_restarts']})")
            self.restarts += 1
            self.set_state("restarting", exit_code=code)
            self.sleep(delay)
            if self.stopping:
                log_line(self.paths, "stopped while waiting to restart")
                self.set_state("stopped", exit_code=code)
                return 0
            attempt += 1


def rotate(paths: Paths, limit: int) -> None:
    try:
        if os.path.getsize(paths.log) > limit:
            os.replace(paths.log, paths.log + ".1")
    except OSError:
        pass


def start(paths: Paths) -> int:
    """Detach a daemon that supervises the command; print its pid and where its log starts."""
    running = read_pid(paths.pid)
    if alive(running):
        print(json.dumps({"error": f"already running (pid {running})", "pid": running}))
        return 1
    config = {**DEFAULTS, **read_json(paths.config)}
    os.makedirs(paths.meta, exist_ok=True)
    rotate(paths, int(config["log_max_bytes"]))
    offset = os.path.getsize(paths.log) if os.path.exists(paths.log) else 0
    for stale in (paths.stop, paths.child):
        try:
            os.unlink(stale)
        except FileNotFoundError:
            pass
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            logfd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(devnull, 0)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            os.close(devnull)
            os.close(logfd)
            os.chdir(paths.dir)
            supervisor = Supervisor(paths, config)
            signal.signal(signal.SIGTERM, supervisor.on_term)
            signal.signal(signal.SIGINT, supervisor.on_term)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            write_atomic(paths.pid, f"{os.getpid()}\n")
            supervisor.set_state("starting", started_at=now())
            os.write(write_end, str(os.getpid()).encode())
            os.close(write_end)
            code = supervisor.loop()
        except BaseException as exc:  # noqa: BLE001 - the daemon has no terminal: say it in the log
            log_line(paths, f"crashed: {exc.__class__.__name__}: {exc}")
        finally:
            try:
                if read_pid(paths.pid) == os.getpid():
                    os.unlink(paths.pid)
            except OSError:
                pass
            os._exit(code)
    os.close(write_end)
    os.waitpid(first, 0)
    with os.fdopen(read_end, "rb") as pipe:
        pid = pipe.read().decode().strip()
    if not pid:
        print(json.dumps({"error": f"the supervisor did not start; see {paths.log}"}))
        return 1
    print(json.dumps({"pid": int(pid), "log_offset": offset}))
    return 0


def stop(paths: Paths, timeout: float) -> int:
    """SIGTERM to the daemon; wait for it (it kills the command after ``timeout``)."""
    pid = read_pid(paths.pid)
    if not alive(pid):
        print(json.dumps({"stopped": False}))
        return 0
    write_atomic(paths.stop, json.dumps({"timeout": timeout}))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout + 15
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):  # the daemon itself is stuck: end it and whatever it started
        child = read_pid(paths.child)
        if child:
            try:
                os.killpg(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        os.kill(pid, signal.SIGKILL)
        log_line(paths, "the supervisor did not stop in time and was killed")
    print(json.dumps({"stopped": True}))
    return 0


def status(paths: Paths) -> int:
    state = read_json(paths.state)
    pid = read_pid(paths.pid)
    state["alive"] = alive(pid)
    if not state["alive"] and state.get("status") in RUNNING:
        state["status"] = "dead"  # the host restarted, or the daemon was killed
    print(json.dumps(state))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supervisor.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", required=True, help="REMOTE_DIR: the run's folder")
    parser.add_argument("--timeout", type=float, default=DEFAULTS["stop_timeout"],
                        help="stop: seconds the command gets after SIGTERM before it is killed")
    args = parser.parse_args(argv)
    paths = Paths(args.dir)
    if args.action == "start":
        return start(paths)
    if args.action == "stop":
        return stop(paths, args.timeout)
    return status(paths)


if __name__ == "__main__":
    sys.exit(main())
