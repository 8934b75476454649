"""A pod's own deadline: past it, the pod stops its training with a checkpoint and ends itself through RunPod's API.

    python3 backstop.py arm    --dir REMOTE_DIR --deadline EPOCH [--grace 120] [--python P --supervisor S --app A]
    python3 backstop.py status --dir REMOTE_DIR

A managed run with MAX_HOURS or MAX_SPEND gives each pod a deadline: when the run's budget would be
gone if this pod alone billed from its create (after what the run's other pods may still cost). The
watcher on the operator's side stops the run at its limits; this program is the backstop for when
that watcher cannot (a laptop asleep, a watcher killed, a network gone), so no pod bills past the
run's limits by more than the stop grace.

``arm`` checks that the pod can end itself (RunPod puts ``RUNPOD_POD_ID`` and a pod-scoped
``RUNPOD_API_KEY`` in every pod's environment: the container's, read from ``/proc/1/environ`` when an
SSH session does not carry them), writes ``.gpu-deploy/backstop.json`` (the deadline: re-arming
rewrites it, the daemon rereads it) and starts the daemon unless one runs, then prints one JSON line.
The key never leaves the pod's environment: it is in no file and no argument.

At the deadline (plus ``--slack`` seconds, so a living watcher acts first and can postpone it), the
daemon stops the training as ``fab stop`` does (``supervisor.py stop``: SIGTERM, the training saves
its step and flushes its uploads within the grace), records a ``terminated`` event in the run ledger
(best effort, with the run's own Python), then posts ``podTerminate`` for its own pod to
``$RUNPOD_API_BASE_URL/graphql`` (default https://api.runpod.io), retrying every 30 s until RunPod
takes it. Its log is ``.gpu-deploy/backstop.log``.

Standard library only: deploy copies this file to the pod, with ``detach.py`` beside it, and runs it with the
pod's python3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

META = ".gpu-deploy"
CONFIG, PID, LOG = "backstop.json", "backstop.pid", "backstop.log"
DEFAULT_BASE_URL = "https://api.runpod.io"
POD_KEYS = ("RUNPOD_POD_ID", "RUNPOD_API_KEY", "RUNPOD_API_BASE_URL")
RETRY = 30.0
TERMINATE = 'mutation {{ podTerminate(input: {{podId: "{pod}"}}) }}'
NOTE = ("import sys\nfrom deploy.training.ledger import TrainingLedger\nledger = TrainingLedger.from_settings()\n"
        "if ledger is not None:\n    ledger.event('terminated', pod=sys.argv[1], message=sys.argv[2])\n")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def path(directory: str, name: str) -> str:
    return os.path.join(directory, META, name)


def log(directory: str, text: str) -> None:
    with open(path(directory, LOG), "a", encoding="utf-8") as out:
        out.write(f"{now()} {text}\n")


def parse_environ(raw: bytes, separator: bytes = b"\0") -> dict[str, str]:
    """``KEY=value`` records (``/proc/PID/environ``: NUL-separated; ``export KEY=value`` lines also read)."""
    found = {}
    for record in raw.split(separator):
        text = record.decode("utf-8", "replace").strip()
        if text.startswith("export "):
            text = text[len("export "):]
        key, sep, value = text.partition("=")
        if sep and key in POD_KEYS:
            found[key] = value.strip().strip("'\"")
    return found


def pod_environment() -> dict[str, str]:
    """RunPod's variables: this process's environment, else the container's (PID 1), else /etc/rp_environment."""
    found = {k: os.environ[k] for k in POD_KEYS if os.environ.get(k)}
    sources = (("/proc/1/environ", b"\0"), ("/etc/rp_environment", b"\n"))
    for source, separator in sources:
        if found.get("RUNPOD_POD_ID") and found.get("RUNPOD_API_KEY"):
            break
        try:
            with open(source, "rb") as handle:
                extra = parse_environ(handle.read(), separator)
        except OSError:
            continue
        found = {**extra, **found}
    return found


def read_config(directory: str) -> dict:
    try:
        with open(path(directory, CONFIG), encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_config(directory: str, config: dict) -> None:
    target = path(directory, CONFIG)
    tmp = f"{target}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    os.replace(tmp, target)


def running_pid(directory: str) -> int | None:
    try:
        with open(path(directory, PID), encoding="utf-8") as handle:
            pid = int(handle.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            alive = b"backstop" in handle.read()
        return pid if alive else None
    except (OSError, ValueError):
        return None


def terminate(env: dict[str, str], timeout: float = 30.0) -> str:
    """Ask RunPod to terminate this pod; returns "" when it took the request, else why not."""
    base = (env.get("RUNPOD_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    body = json.dumps({"query": TERMINATE.format(pod=env["RUNPOD_POD_ID"])}).encode()
    request = urllib.request.Request(f"{base}/graphql", data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {env['RUNPOD_API_KEY']}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            data = json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} from {base}"
    except (OSError, ValueError) as exc:
        return f"no answer from {base} ({exc.__class__.__name__})"
    errors = data.get("errors") if isinstance(data, dict) else None
    if errors:
        return "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)[:300]
    return ""


def stop_training(directory: str, config: dict) -> None:
    python, supervisor = config.get("python") or "", config.get("supervisor") or ""
    if not (os.path.isfile(python) and os.path.isfile(supervisor)):
        log(directory, "no native training here to stop")
        return
    grace = float(config.get("grace") or 120)
    try:
        done = subprocess.run([python, supervisor, "stop", "--dir", directory, "--timeout", str(int(grace))],
                              capture_output=True, text=True, timeout=grace + 60)
        log(directory, f"training stopped: {done.stdout.strip()[-300:] or done.returncode}")
    except (OSError, subprocess.SubprocessError) as exc:
        log(directory, f"stopping the training failed: {exc}")


def record(directory: str, config: dict, pod: str, message: str) -> None:
    python, app = config.get("python") or "", config.get("app") or ""
    if not (os.path.isfile(python) and os.path.isdir(app)):
        return
    env = {**os.environ, "PYTHONPATH": app}
    try:
        subprocess.run([python, "-c", NOTE, pod, message], cwd=directory, env=env, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        log(directory, f"could not record the end in the run ledger: {exc}")


def at_deadline(directory: str, env: dict[str, str]) -> None:
    config = read_config(directory)
    why = config.get("why") or "the run's deadline"
    log(directory, f"deadline reached ({why}): stopping the training, then ending pod {env['RUNPOD_POD_ID']}")
    stop_training(directory, config)
    record(directory, config, env["RUNPOD_POD_ID"], f"the pod ended itself at its deadline ({why}); no watcher did")
    while True:
        problem = terminate(env)
        if not problem:
            log(directory, "RunPod took the terminate request")
            return
        log(directory, f"terminate failed: {problem}; trying again in {RETRY:.0f} s")
        time.sleep(RETRY)


def watch(directory: str, env: dict[str, str]) -> None:
    while True:
        config = read_config(directory)
        deadline = float(config.get("deadline") or 0) + float(config.get("slack") or 0)
        if config.get("disarmed"):
            log(directory, "disarmed")
            return
        left = deadline - time.time()
        if deadline and left <= 0:
            at_deadline(directory, env)
            return
        time.sleep(max(0.5, min(30.0, left if deadline else 30.0)))


def daemonize(directory: str, env: dict[str, str]) -> int:
    """Detach the daemon (its own session, stdio to the log) and return its pid to the caller."""
    if __package__:
        from .detach import detach
    else:  # run as a file: deploy copies detach.py beside it
        from detach import detach
    return int(detach(lambda ready: daemon(directory, env, ready), path(directory, LOG)) or 0)


def daemon(directory: str, env: dict[str, str], ready: int) -> None:
    """The detached daemon's life: pid file, then the watch; never returns."""
    code = 1
    try:
        with open(path(directory, PID), "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        os.write(ready, str(os.getpid()).encode())
        os.close(ready)
        watch(directory, env)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - no terminal: say it in the log
        log(directory, f"crashed: {exc.__class__.__name__}: {exc}")
    os._exit(code)


def arm(args: argparse.Namespace) -> int:
    env = pod_environment()
    if not (env.get("RUNPOD_POD_ID") and env.get("RUNPOD_API_KEY")):
        print(json.dumps({"armed": False, "why": "RUNPOD_POD_ID and RUNPOD_API_KEY are not in the pod's environment, "
                                                 "so the pod cannot end itself"}))
        return 3
    directory = os.path.abspath(args.dir)
    os.makedirs(os.path.join(directory, META), exist_ok=True)
    write_config(directory, {"deadline": args.deadline, "slack": args.slack, "grace": args.grace, "why": args.why,
                             "python": args.python, "supervisor": args.supervisor, "app": args.app})
    pid = running_pid(directory)
    again = pid is not None
    if pid is None:
        pid = daemonize(directory, env)
    print(json.dumps({"armed": bool(pid), "pid": pid, "pod": env["RUNPOD_POD_ID"], "deadline": args.deadline,
                      "again": again}))
    return 0 if pid else 1


def status(args: argparse.Namespace) -> int:
    directory = os.path.abspath(args.dir)
    print(json.dumps({**read_config(directory), "pid": running_pid(directory)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backstop.py", description="A pod's own deadline.")
    sub = parser.add_subparsers(dest="command", required=True)
    armed = sub.add_parser("arm")
    armed.add_argument("--dir", required=True)
    armed.add_argument("--deadline", type=float, required=True, help="epoch seconds")
    armed.add_argument("--slack", type=float, default=30.0, help="seconds past the deadline before acting")
    armed.add_argument("--grace", type=float, default=120.0, help="seconds the training gets to save and upload")
    armed.add_argument("--why", default="MAX_HOURS/MAX_SPEND")
    armed.add_argument("--python", default="")
    armed.add_argument("--supervisor", default="")
    armed.add_argument("--app", default="")
    shown = sub.add_parser("status")
    shown.add_argument("--dir", required=True)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return arm(args) if args.command == "arm" else status(args)


if __name__ == "__main__":
    sys.exit(main())
