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
- The training process is tracked apart from the daemon, so a daemon killed with ``kill -9`` leaves
  no untracked training behind: the command holds ``.gpu-deploy/train.lock`` (an ``flock`` the daemon
  takes and hands to it) for its lifetime, and ``.gpu-deploy/training.json`` records its pid, process
  group, ``/proc`` start time and boot id. ``stop`` then stops an orphaned training itself (SIGTERM,
  the timeout for the flush, then SIGKILL to its process group), and ``start`` refuses while one
  runs, so two trainings never write the same checkpoints.

``.gpu-deploy/state.json`` says what the daemon is doing, for ``fab status``; ``status`` adds whether
the daemon lives (``alive``) and whether a training runs without it (``status: orphaned``).

The ``.env`` dialect (shared with :mod:`deploy.hosts.envfile`, which writes it): UTF-8 lines
``KEY='value'`` ending in ``\\n``, the value taken literally. See :func:`parse_dotenv`.

One file on purpose (more than the ~450 lines a module gets): it is copied to the host alone and run
by any python3 >= 3.8 with the standard library only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import unicodedata
from datetime import datetime, timezone

META = ".gpu-deploy"
LOG = "train.log"
DEFAULTS = {"command": [sys.executable, "-m", "deploy.training.entrypoint"], "env": {}, "prepend": {},
            "max_restarts": 5, "backoff": 1.0, "max_backoff": 30.0, "healthy_seconds": 600.0,
            "stop_timeout": 120.0, "log_max_bytes": 256 * 1024 * 1024}
RUNNING = ("starting", "running", "restarting", "stopping")
LOCK_WAIT = 10.0  # seconds a new run waits for the SIGKILLed leftovers of the last one to let go of the lock


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
        self.lock = os.path.join(self.meta, "train.lock")
        self.training = os.path.join(self.meta, "training.json")
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


# --------------------------------------------------------------------------- the .env dialect

DOTENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTENV_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)='([^']*)'")
# python-dotenv (and docker-compose 1.x through it) expands exactly this, even inside single quotes.
_EXPANDED = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")


def dotenv_refusal(value: str) -> str | None:
    """Why ``value`` cannot be carried by the dialect (a phrase that never quotes it), or None.

    Inside single quotes python-dotenv, docker-compose 1.x, Compose v2 and :func:`parse_dotenv` all
    keep the text as it is, except for what is refused here: a line break of any kind (it ends the
    line for some reader) or another control character, a single quote (it ends the value), a
    backslash before another backslash or at the end (python-dotenv unescapes ``\\\\`` and ``\\'``,
    Compose v2 keeps them), and ``${NAME}`` (python-dotenv expands it even inside single quotes).
    """
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            return f"a control or line-separator character (U+{ord(char):04X})"
    if "'" in value:
        return "a single quote (')"
    if "\\\\" in value or value.endswith("\\"):
        return "a backslash before another backslash or at the end"
    if _EXPANDED.search(value):
        return "${...}, which python-dotenv and docker-compose 1.x expand and Compose v2 keeps"
    return None


def parse_dotenv(text: str) -> dict[str, str]:
    """The values of a ``.env`` in the dialect: ``KEY='value'`` lines; blank lines and ``#`` comments skipped.

    Lines end at ``\\n`` only (``str.splitlines`` would also split at U+2028, U+0085 ... and let a
    value inject a key). Any other line raises ValueError naming its number, never its text.
    """
    values: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line or line.startswith("#"):
            continue
        match = _DOTENV_LINE.fullmatch(line)
        if not match or dotenv_refusal(match.group(2)) is not None:
            raise ValueError(f"line {number} is not KEY='value' as gpu-deploy writes it")
        values[match.group(1)] = match.group(2)
    return values


def read_env_file(path: str) -> dict[str, str]:
    """``path`` read by :func:`parse_dotenv`; no file means no values. ValueError names the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return {}
    try:
        return parse_dotenv(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; deploy again to rewrite it") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; deploy again to rewrite it") from None


# --------------------------------------------------------------------------- processes


def alive(pid: int | None, paths: Paths | None = None) -> bool:
    """Whether ``pid`` is a running supervisor (of ``paths.dir`` when given: pids are reused after a pod
    restart, and two runs may share a host, so check its command line and its working directory)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if b"supervisor.py" not in handle.read():
                return False
        return paths is None or os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(paths.dir)
    except OSError:
        return False


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot, ``/proc/<pid>/stat`` field 22); None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def take_lock(paths: Paths) -> int | None:
    """An fd holding ``train.lock`` exclusively, or None while a training (or its leftovers) holds it."""
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def lock_held(paths: Paths) -> bool:
    """Whether some process holds ``train.lock``: the command and the children it forked hold it."""
    if not os.path.isdir(paths.meta):
        return False
    fd = take_lock(paths)
    if fd is None:
        return True
    os.close(fd)
    return False


def training_leader(paths: Paths) -> int | None:
    """The recorded training pid if that very process still runs (same boot, same start time)."""
    record = read_json(paths.training)
    pid, ticks = record.get("pid"), record.get("start_ticks")
    if not isinstance(pid, int) or not isinstance(ticks, int) or record.get("boot_id") != boot_id():
        return None  # ticks is None when the command had already exited as it was recorded
    return pid if start_ticks(pid) == ticks else None


def training_running(paths: Paths) -> bool:
    """Whether a training started from this folder still runs (its lock is held, or its very process lives)."""
    return lock_held(paths) or training_leader(paths) is not None


def signal_group(pgid: object, signum: int) -> None:
    if isinstance(pgid, int) and pgid > 1:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def wait_for(condition, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


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

    def lock_for_run(self) -> int | None:
        """``train.lock``, waiting briefly for the killed leftovers of the last run to let go of it."""
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            fd = take_lock(self.paths)
            if fd is not None or self.stopping or time.monotonic() >= deadline:
                return fd
            time.sleep(0.2)

    def spawn(self, attempt: int) -> bool:
        """Start the command holding ``train.lock``; False when an earlier training still holds it."""
        lock = self.lock_for_run()
        if lock is None:
            return False
        try:
            with open(self.paths.log, "ab") as out:
                self.child = subprocess.Popen(self.config["command"], cwd=self.paths.dir, env=self.environment(),
                                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True, pass_fds=(lock,))
        finally:
            os.close(lock)  # the command's copy holds the lock for as long as it or a forked child lives
        pid = self.child.pid
        write_atomic(self.paths.training, json.dumps({"pid": pid, "pgid": pid, "start_ticks": start_ticks(pid),
                                                      "boot_id": boot_id(), "started_at": now()}))
        write_atomic(self.paths.child, f"{pid}\n")
        log_line(self.paths, f"started the entrypoint (pid {pid}, attempt {attempt})")
        self.set_state("running", child=pid, started_at=now(), exit_code=None)
        return True

    def run_once(self, attempt: int) -> tuple[int | None, float]:
        """One run of the command to its end; ``(None, 0)`` when an earlier training blocks it."""
        started = time.monotonic()
        if not self.spawn(attempt):
            return None, 0.0
        assert self.child is not None
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
            if code is None:
                if self.stopping:
                    self.set_state("stopped", exit_code=None)
                    return 0
                log_line(self.paths, "a training started here earlier still holds .gpu-deploy/train.lock; not starting "
                                     "a second one (stop it first)")
                self.set_state("failed", exit_code=None)
                return 1
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


def refusal(paths: Paths) -> dict | None:
    """Why ``start`` must not start here (as its JSON answer), or None."""
    running = read_pid(paths.pid)
    if alive(running, paths):
        return {"error": f"already running (pid {running})", "pid": running}
    if training_running(paths):
        leader = training_leader(paths)
        return {"error": f"a training started here earlier still runs without its supervisor (pid "
                         f"{leader or 'unknown'}); stop it first (fab stop), then start again", "orphan": leader}
    try:
        read_env_file(paths.env)
    except ValueError as exc:
        return {"error": str(exc)}
    return None


def daemon(paths: Paths, config: dict, write_end: int) -> None:
    """The detached daemon's life (stdio already on the log): signals, pid file, the loop; never returns."""
    code = 1
    try:
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


def start(paths: Paths) -> int:
    """Detach a daemon that supervises the command; print its pid and where its log starts."""
    refused = refusal(paths)
    if refused:
        print(json.dumps(refused))
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
    if __package__:
        from .detach import detach
    else:  # run as a file: deploy installs detach.py beside it
        from detach import detach
    pid = detach(lambda ready: daemon(paths, config, ready), paths.log, 0o644)
    if not pid:
        print(json.dumps({"error": f"the supervisor did not start; see {paths.log}"}))
        return 1
    print(json.dumps({"pid": int(pid), "log_offset": offset}))
    return 0


def stop_daemon(paths: Paths, pid: int, timeout: float) -> bool:
    """SIGTERM to the daemon, which stops the command; SIGKILL to it if stuck. Whether it stopped by itself."""
    write_atomic(paths.stop, json.dumps({"timeout": timeout}))
    try:
        os.kill(pid, signal.SIGTERM)
        if wait_for(lambda: not alive(pid, paths), timeout + 15):
            return True
        os.kill(pid, signal.SIGKILL)  # the command it started is then stopped as an orphan
    except ProcessLookupError:
        return True
    log_line(paths, "the supervisor did not stop in time and was killed")
    return False


def stop_orphan(paths: Paths, timeout: float) -> int | None:
    """Stop a training whose daemon is gone, as the daemon would; the pid it had, if known.

    SIGTERM goes to the entrypoint (it forwards it to training, whose callbacks flush), or to the
    process group when the entrypoint is gone; once it has exited, or after ``timeout``, SIGKILL goes
    to the whole group (data workers, a stuck child). The group id is ours to signal: the lock or the
    verified leader shows that our processes still hold it, so no stranger can have been given it.
    """
    leader = training_leader(paths)
    pgid = read_json(paths.training).get("pgid")
    log_line(paths, f"stopping a training whose supervisor is gone (pid {leader or 'unknown'})")
    if leader is not None:
        try:
            os.kill(leader, signal.SIGTERM)
        except ProcessLookupError:
            pass
        ended = wait_for(lambda: training_leader(paths) is None, timeout)
    else:
        signal_group(pgid, signal.SIGTERM)
        ended = wait_for(lambda: not lock_held(paths), timeout)
    if not ended:
        log_line(paths, "the stop deadline passed: killing the training's process group")
    signal_group(pgid, signal.SIGKILL)
    if not wait_for(lambda: not training_running(paths), 10):
        log_line(paths, "a process outside the training's process group still holds .gpu-deploy/train.lock")
    write_atomic(paths.state, json.dumps({**read_json(paths.state), "status": "stopped", "exit_code": None,
                                          "updated": now()}))
    return leader


def stop(paths: Paths, timeout: float) -> int:
    """Stop the daemon (it stops the command within ``timeout``), then any training it left behind."""
    pid = read_pid(paths.pid)
    result: dict = {"stopped": False}
    if alive(pid, paths):
        if stop_daemon(paths, pid, timeout):  # it SIGKILLed the command's group: wait for the lock's release
            wait_for(lambda: not training_running(paths), LOCK_WAIT)
        result["stopped"] = True
    if training_running(paths):  # the daemon was killed (kill -9, OOM) or stuck: the training is an orphan
        result.update(stopped=True, orphan=stop_orphan(paths, 0 if result["stopped"] else timeout))
    print(json.dumps(result))
    return 0


def status(paths: Paths) -> int:
    """state.json, plus whether the daemon lives and whether a training runs without it (``orphaned``)."""
    state = read_json(paths.state)
    state["alive"] = alive(read_pid(paths.pid), paths)
    running = training_running(paths)
    state["training"] = {"running": running, "pid": training_leader(paths) if running else None}
    if not state["alive"] and running:
        state["status"] = "orphaned"
    elif not state["alive"] and state.get("status") in RUNNING:
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
