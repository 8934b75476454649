"""Benchmark: a code-only redeploy reloaded warm, to the new code's first step, against a cold import floor.

Issue 22's figure, for both runtimes in one run, on this machine as the tests do: a moto S3 server,
an sshd standing in for the host (native: a RunPod-like pod whose PATH has no Docker and whose
NATIVE_PYTHON is this virtualenv's python, which has torch; compose: the local Docker engine and
the tests' base image, ``fab image-build --push`` first). The training project is a copy of
tests/fixtures/trainer (``toytrain``) plus one module the benchmark adds, ``stepclock.py``: a
Lightning callback appending ``"<global_step> <time.time()> <VERSION>"`` to ``stepclock.txt`` in
the working directory (REMOTE_DIR, ``/workspace`` in the container) at every train batch end.

Per runtime (setup not measured: first ``fab deploy-runpod``, a checkpoint in S3):

1. ``--repeat`` code-only redeploys, each after the training has run ``--pause`` seconds (30: a user's edit
   takes longer than that; 0: right after the last; the trainings run with ``WARM_STANDBY=10`` unless
   ``--standby`` says otherwise, so after 30 s the next reload's process stands by): ``VERSION = N`` in
   ``toytrain/__init__.py`` changed, a clock started, ``fab deploy-runpod``; stopped at the first stepclock line
   with the new VERSION (the new code's first step, timed by the training itself). The deploy must say ``reload``
   and the log ``(warm: torch and Lightning imported ahead)``. The log's marker lines (stop checkpoint saved,
   ``entrypoint: reloading``, the resume line, ``entrypoint: running``, ``toytrain: version N``)
   are timed too (native: train.log polled every 0.1 s; compose: ``docker logs --timestamps``).
2. The floor, right after each redeploy on the same host: a cold ``python -c "import torch,
   lightning, toytrain; torch.load(<the checkpoint the reload resumed from>)"``, process start to
   end, with the training's interpreter (native: REMOTE_DIR/.venv/bin/python with the supervisor's
   PYTHONPATH; compose: ``docker exec`` in the running container, timed inside it with ``date``).
   The training keeps running meanwhile, as it does on the host.
3. ``--restarts`` cold restarts for comparison: a one-line change and ``fab deploy-runpod --restart``.

Ratio = median redeploy-to-first-step / median floor (issue 22's target: <= 1.5).

Run (as root, with the virtualenv):

    .venv/bin/python -m benchmarks.bench_warm_redeploy [--runtime native|compose|both] [--repeat 3]
                                                       [--restarts 1] [--pause 30] [--json out.json]

It stops its runs (``fab stop``), its servers and containers, and removes its folders and image tags.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.settings import load_settings  # noqa: E402
from deploy.storage import Storage  # noqa: E402
from deploy.storage.checkpoints import list_checkpoints  # noqa: E402
from tests.harness.fab import FAB, run_fab  # noqa: E402
from tests.harness.pod import pids_in, pod_bin  # noqa: E402
from tests.harness.servers import S3Server, SshServer  # noqa: E402
from tests.harness.waiting import wait_until, write_dotenv  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "trainer"
CLOCK_FILE = "stepclock.txt"
TRAIN_COMMAND = ("python -m toytrain fit --config config.yaml --data.dataset_dir data "
                 "--trainer.callbacks+=stepclock.StepClock")
BENCH_IMAGE = "gpu-deploy-bench/warm-redeploy"
WARM_MARK = "(warm: torch and Lightning imported ahead)"
STANDBY = "10"
"""WARM_STANDBY for the benchmark's trainings (``--standby``): the next reload's process stands by after 10 s (the
product's default is 60 s), so a change after the default --pause of 30 s starts from it; with --pause 0 none stands
by yet. ``--standby default`` leaves WARM_STANDBY unset (then use a --pause over 60)."""
STEPCLOCK = '''"""Benchmark probe: one line per train batch end, "<global_step> <time.time()> <VERSION>"."""

import time

import lightning.pytorch as pl

import toytrain


class StepClock(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open("stepclock.txt", "a") as clock:
            clock.write(f"{trainer.global_step} {time.time():.3f} {toytrain.VERSION}\\n")
'''
# The log lines that split a reload, in the order they come (first match after the clock starts).
MARKERS = (("stop checkpoint saved", "gpu-deploy: saved step"), ("entrypoint: reloading", "entrypoint: reloading"),
           ("resume line", "entrypoint: resuming"), ("entrypoint: running", "entrypoint: running"))


def fab(operator: Path, *args: str, timeout: float = 1800) -> tuple[float, str]:
    seconds, out, _ = fab_timed(operator, *args, timeout=timeout)
    return seconds, out


def fab_timed(operator: Path, *args: str, timeout: float = 1800) -> tuple[float, str, list[tuple[float, str]]]:
    """``fab ARGS``: its seconds, its output, and each output line with the seconds since the start it came."""
    started = time.monotonic()
    proc = subprocess.Popen([FAB, "--search-root", str(ROOT), *args], cwd=operator, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines: list[tuple[float, str]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((round(time.monotonic() - started, 2), line.rstrip("\n")))
        code = proc.wait()
    finally:
        timer.cancel()
    seconds, out = time.monotonic() - started, "\n".join(line for _, line in lines)
    if code != 0:
        raise RuntimeError(f"fab {' '.join(args)} failed ({code}):\n{out[-6000:]}")
    return seconds, out, lines


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class LogWatch:
    """Native: train.log polled every 0.1 s, each new line with the time it was first seen."""

    def __init__(self, path: Path) -> None:
        self.path, self.lines, self._stop = path, [], threading.Event()
        self.offset = path.stat().st_size if path.exists() else 0
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        partial = ""
        while not self._stop.is_set():
            try:
                size = self.path.stat().st_size
                if size < self.offset:
                    self.offset = 0  # rotated or truncated
                if size > self.offset:
                    with open(self.path, "rb") as f:
                        f.seek(self.offset)
                        data = f.read()
                    self.offset += len(data)
                    now = time.time()
                    text = partial + data.decode(errors="replace")
                    *done, partial = text.split("\n")
                    self.lines.extend((now, line) for line in done)
            except OSError:
                pass
            self._stop.wait(0.1)

    def __enter__(self) -> "LogWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()


class Host:
    """One runtime's host, its operator folder and project, and how to read what the training does."""

    def __init__(self, runtime: str, tmp: Path, server: S3Server, base_image: str | None,
                 standby: str = STANDBY) -> None:
        self.runtime = runtime
        work = tmp / runtime
        work.mkdir()
        if runtime == "native":  # a RunPod-like pod: no docker on the sessions' PATH
            self.sshd = SshServer(work / "sshd", path=f"{pod_bin(work / 'bin')}:/usr/sbin:/sbin").start()
        else:
            self.sshd = SshServer(work / "sshd").start()
        self.remote_dir = f"/tmp/gpu-deploy-bench-warm-{runtime}-{uuid.uuid4().hex[:6]}"
        self.project, self.operator = work / "my-trainer", work / "operator"
        shutil.copytree(FIXTURE, self.project)
        (self.project / "stepclock.py").write_text(STEPCLOCK)
        self.operator.mkdir()
        extra = ({"NATIVE_PYTHON": sys.executable} if runtime == "native"
                 else {"IMAGE": f"{BENCH_IMAGE}:latest", "BASE_IMAGE": base_image or ""})
        self.values = {**server.environ("bench-warm", prefix=f"warm-{runtime}-{uuid.uuid4().hex[:6]}"),
                       "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(self.sshd.port), "RUNPOD_USER": self.sshd.user,
                       "RUNPOD_SSH_KEY": str(self.sshd.client_key), "SSH_KNOWN_HOSTS": str(work / "known_hosts"),
                       "REMOTE_DIR": self.remote_dir, "RUNTIME": runtime, "TRAIN_PROJECT": str(self.project),
                       "TRAIN_COMMAND": TRAIN_COMMAND, "DATASET": str(self.project / "dataset"),
                       "S3_SYNC_FLUSH_TIMEOUT": "30", **extra}
        if standby != "default":
            self.values["WARM_STANDBY"] = standby
        write_dotenv(self.operator / ".env", self.values)
        self.version = 1

    # --- the project
    def change_code(self) -> int:
        init = self.project / "toytrain" / "__init__.py"
        self.version += 1
        init.write_text(re.sub(r"VERSION = \d+", f"VERSION = {self.version}", init.read_text()))
        return self.version

    # --- the host
    def clock_lines(self) -> list[tuple[int, float, int]]:
        try:
            text = Path(self.remote_dir, CLOCK_FILE).read_text()
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3:
                try:
                    out.append((int(parts[0]), float(parts[1]), int(parts[2])))
                except ValueError:
                    continue
        return out

    def first_step(self, version: int, after: float) -> tuple[int, float] | None:
        for step, at, v in self.clock_lines():
            if v == version and at >= after:
                return step, at
        return None

    def container(self) -> str:
        project = "gpu-deploy-" + Path(self.remote_dir).name
        out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                             capture_output=True, text=True, check=True).stdout.split()
        if not out:
            raise RuntimeError(f"no running container of {project}")
        return out[0]

    def log_since(self, since: float, watch: LogWatch | None) -> list[tuple[float, str]]:
        """The log lines since ``since`` with their times (native: first seen by ``watch``; compose: Docker's)."""
        if watch is not None:
            return list(watch.lines)
        result = subprocess.run(["docker", "logs", "--timestamps", f"--since={since:.3f}", self.container()],
                                capture_output=True, text=True, check=False)
        lines = []
        for raw in (result.stdout + result.stderr).splitlines():
            stamp, _, line = raw.partition(" ")
            match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", stamp)
            if not match:
                continue
            frac = float(match.group(2) or 0)
            at = dt.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
            lines.append((at.timestamp() + frac, line))
        return sorted(lines, key=lambda x: x[0])

    def floor(self, checkpoint: str) -> float:
        """A cold interpreter importing torch, Lightning and the project and loading ``checkpoint``, start to end."""
        code = (f"import torch, lightning, toytrain; "
                f"torch.load({checkpoint!r}, map_location='cpu', weights_only=False)")
        if self.runtime == "native":
            d = self.remote_dir
            env = {**os.environ, "PATH": f"{d}/.venv/bin:{os.environ.get('PATH', '')}",
                   "PYTHONPATH": f"{d}:{d}/src:{d}/.gpu-deploy/app"}
            env.pop("VIRTUAL_ENV", None)
            started = time.monotonic()
            subprocess.run([f"{d}/.venv/bin/python", "-c", code], cwd=d, env=env, check=True)
            return time.monotonic() - started
        line = (f"cd /workspace && a=$(date +%s.%N) && python -c {shlex.quote(code)} && b=$(date +%s.%N) && "
                'echo "$a $b"')
        out = subprocess.run(["docker", "exec", self.container(), "sh", "-c", line], capture_output=True, text=True,
                             check=True).stdout.split()
        return float(out[-1]) - float(out[-2])

    def cleanup(self) -> None:
        try:
            run_fab("stop", "--timeout=10", cwd=self.operator, timeout=300)
        except Exception as exc:  # noqa: BLE001 - clean up the rest anyway
            print(f"fab stop ({self.runtime}): {exc}", file=sys.stderr)
        if self.runtime == "compose":
            project = "gpu-deploy-" + Path(self.remote_dir).name
            subprocess.run(f"docker ps -aq --filter label=com.docker.compose.project={project} | xargs -r docker rm -f",
                           shell=True, check=False, capture_output=True)
        else:
            for marker in ("supervisor.py", "deploy.training", "toytrain"):
                for pid in pids_in(self.remote_dir, marker):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        self.sshd.stop()
        subprocess.run(["rm", "-rf", self.remote_dir], check=False)


def split(lines: list[tuple[float, str]], start: float, version: int) -> dict[str, float | None]:
    """Seconds from ``start`` to the first of each marker line after it."""
    marks: dict[str, float | None] = {}
    for name, text in (*MARKERS, (f"toytrain: version {version}", f"toytrain: version {version}")):
        at = next((t for t, line in lines if t >= start - 0.5 and text in line), None)
        marks[name] = None if at is None else round(at - start, 2)
    return marks


def last_old(host: Host, version: int, start: float) -> float | None:
    """Seconds from ``start`` to the old code's last step (the stop request lands within a batch of it)."""
    old = [at for _, at, v in host.clock_lines() if v != version and at >= start]
    return round(max(old) - start, 2) if old else None


def redeploy(host: Host, restart: bool) -> dict[str, object]:
    """One one-line change deployed (reloaded, or restarted with ``restart``), to the new code's first step."""
    version = host.change_code()
    watch = LogWatch(Path(host.remote_dir, "train.log")) if host.runtime == "native" else None
    start = time.time()
    if watch is not None:
        watch.__enter__()
    try:
        seconds, out, timed = fab_timed(host.operator, "deploy-runpod", *(["--restart"] if restart else []))
        first = wait_until(lambda: host.first_step(version, start), 300, f"the first step of version {version}",
                           interval=0.1)
        time.sleep(1.0)  # the log's lines up to the first step are written
    finally:
        if watch is not None:
            watch.__exit__()
    lines = host.log_since(start - 1, watch)
    text = "\n".join(line for _, line in lines)
    running = [line for _, line in lines if "entrypoint: running" in line]
    ckpt = re.search(r"--ckpt_path=(\S+)", running[-1]) if running else None
    reload_line = next((ln.strip() for ln in out.splitlines() if "reload" in ln), "")
    return {
        "version": version, "restart": restart, "deploy s": round(seconds, 2),
        "to first new step s": round(first[1] - start, 2), "first new step": first[0],
        "deploy says reload": "change    reload" in out, "deploy reload line": reload_line,
        "warm in log": WARM_MARK in text, "checkpoint": ckpt.group(1) if ckpt else None,
        "marks s": {"last old step": last_old(host, version, start), **split(lines, start, version)},
        "resume line": next((ln.strip() for _, ln in lines if "entrypoint: resuming" in ln), None),
        "deploy output tail": out.strip().splitlines()[-3:],
        "deploy lines": [[t, line[:100]] for t, line in timed],
    }


def bench(host: Host, repeat: int, restarts: int, pause: float) -> dict[str, object]:
    figures: dict[str, object] = {"pause s": pause}
    if host.runtime == "compose":
        figures["setup image-build --push s"], _ = fab(host.operator, "image-build", "--push", "--network=none",
                                                       "--force")
    figures["setup first deploy s"], _ = fab(host.operator, "deploy-runpod")
    storage = Storage.from_settings(load_settings(environ=host.values))
    wait_until(lambda: list_checkpoints(storage), 300, "a checkpoint in S3")
    wait_until(lambda: host.first_step(1, 0), 120, "the first step of version 1")
    reloads, floors = [], []
    for i in range(repeat):
        time.sleep(pause)  # the training runs a while before the next change, as between a user's edits
        run = redeploy(host, restart=False)
        print(f"[{host.runtime}] reload {i + 1}: {json.dumps(run)}", flush=True)
        if run["checkpoint"]:
            run["floor s"] = round(host.floor(str(run["checkpoint"])), 2)
            floors.append(run["floor s"])
            print(f"[{host.runtime}] floor {i + 1}: {run['floor s']} s", flush=True)
        reloads.append(run)
    cold = []
    for i in range(restarts):
        run = redeploy(host, restart=True)
        print(f"[{host.runtime}] restart {i + 1}: {json.dumps(run)}", flush=True)
        cold.append(run)
    figures["reloads"], figures["restarts"] = reloads, cold
    first = median([float(r["to first new step s"]) for r in reloads])
    floor = median(floors)
    figures["median"] = {
        "deploy s": median([float(r["deploy s"]) for r in reloads]),
        "to first new step s": first,
        "floor s": floor,
        "ratio": round(first / floor, 2) if first and floor else None,
        "restart deploy s": median([float(r["deploy s"]) for r in cold]),
        "restart to first new step s": median([float(r["to first new step s"]) for r in cold]),
        "all reloaded warm": all(r["deploy says reload"] and r["warm in log"] for r in reloads),
    }
    for name in ["last old step", *(m for m, _ in MARKERS), "toytrain: version"]:
        values = [v for r in reloads for k, v in r["marks s"].items() if k.startswith(name) and v is not None]
        figures["median"][f"mark {name} s"] = median(values)
    return figures


def table(results: dict[str, dict]) -> str:
    rows = [("", *results)]
    keys = ["deploy s", "to first new step s", "floor s", "ratio", "mark last old step s",
            "mark stop checkpoint saved s", "mark entrypoint: reloading s", "mark resume line s",
            "mark entrypoint: running s", "mark toytrain: version s",
            "restart deploy s", "restart to first new step s", "all reloaded warm"]
    for key in keys:
        rows.append((key, *(str(r.get("median", {}).get(key)) for r in results.values())))
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width)) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=("native", "compose", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=3, help="warm redeploys (and floors) per runtime")
    parser.add_argument("--restarts", type=int, default=1, help="cold restarts per runtime, for comparison")
    parser.add_argument("--pause", type=float, default=30.0,
                        help="seconds the training runs before each change (0: each redeploy right after the last)")
    parser.add_argument("--standby", default=STANDBY,
                        help="WARM_STANDBY for the trainings (seconds, off, or default: unset, the product's 60 s)")
    parser.add_argument("--workdir", default="/var/tmp")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    runtimes = ("native", "compose") if args.runtime == "both" else (args.runtime,)

    base = None
    if "compose" in runtimes:
        from deploy import images
        from deploy.dev.baseimage import ensure_base_image

        base = ensure_base_image(images.docker_client()).tag
    tmp = Path(tempfile.mkdtemp(prefix="bench-warm-", dir=args.workdir))
    server = S3Server(tmp / "moto").start()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out: dict[str, object] = {"uptime before": uptime}
    results: dict[str, dict] = {}
    hosts: list[Host] = []
    try:
        server.client().create_bucket(Bucket="bench-warm")
        for runtime in runtimes:
            host = Host(runtime, tmp, server, base, args.standby)
            hosts.append(host)
            try:
                results[runtime] = bench(host, args.repeat, args.restarts, args.pause)
            except Exception as exc:  # noqa: BLE001 - report it, go on with the other runtime
                results[runtime] = {"error": str(exc)[-4000:]}
                print(f"[{runtime}] failed: {exc}", file=sys.stderr, flush=True)
            finally:
                host.cleanup()
    finally:
        for host in hosts:
            if host.sshd.proc is not None and host.sshd.proc.poll() is None:
                host.sshd.stop()
        server.stop()
        tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", BENCH_IMAGE],
                              capture_output=True, text=True, check=False).stdout.split()
        if tags:
            subprocess.run(["docker", "rmi", *tags], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    out["uptime after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out["results"] = results
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print()
    print(table(results))
    print(f"\nload: {out['uptime before']}\n  ->  {out['uptime after']}")


if __name__ == "__main__":
    main()
