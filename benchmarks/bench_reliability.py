"""Reliability figures: crashes, an S3 outage, stops, a killed push, a changed host key and secrets.

    .venv/bin/python -m benchmarks.bench_reliability [--seed N] [--kills 5] [--outage 30]
                                                     [--only hostkey,compose,native,push,secrets]
                                                     [--out docs/reliability.md]

Everything runs against the real parts on this machine: its own moto S3 server, two OpenSSH servers
on loopback (a Docker host, and a "pod" whose sessions cannot see Docker, so deploy picks the
native runtime) and the local Docker engine. The operator side is ``fab`` as a user runs it, in a
subprocess, from a project folder with a ``.env``; training is the demo model on the CPU with a
checkpoint every 10 steps and a step recorder (``benchrec.StepRecorder`` in the project folder) that
appends every trained step to ``REMOTE_DIR/steps.log``.

Rows (each says what was done, what was expected, what was measured):

- kill -9 of the whole training (the container's init, or the native training's process group) at
  ``--kills`` random points per runtime; after each restart (compose's restart policy, the native
  supervisor) the step it resumed from, and whether every complete checkpoint file on disk at the
  kill is in S3 with the same sha256;
- the S3 server frozen (SIGSTOP: connections hang, as on a dead link) for ``--outage`` seconds:
  steps trained meanwhile, no restart, and every checkpoint in S3 afterwards;
- ``fab stop`` at a random point mid-epoch, then ``fab deploy-runpod``: the step saved on stop, the
  step resumed from, the first step trained after it;
- the newest checkpoint in S3 truncated (its metadata kept), deployed to a fresh REMOTE_DIR;
- ``fab image-to-s3`` of an image with five 64 MB layers killed (SIGKILL) about half way, while a
  layer's multipart upload is in progress, then run again: layers reused, uploads left open;
- a changed host key: the deploy refused, the sshd log (VERBOSE) shows no login, nothing on the host;
- secrets: every process's argv sampled all along (this machine is both laptop and host), logs,
  printed output, every file under the REMOTE_DIRs but ``.env``, the bucket, the training image
  (``docker save`` bytes and its config's env).

Random points come from ``--seed`` (printed; rerun with it to get the same delays). Writes the table
to ``--out`` (keeping a hand-written ``## Reading the figures`` section) and prints it. About 10
minutes on 2 cores; run it as root, as the tests run here (it signals processes inside containers).
One file on purpose (more than ~450 lines): the rows share the servers, the deploys, the secret
sampler and the report, and run as one program.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from deploy.dev.waiting import wait_until  # noqa: E402
from deploy.settings import load_settings  # noqa: E402
from deploy.storage import Storage  # noqa: E402
from deploy.storage.checkpoints import CheckpointInfo, list_checkpoints  # noqa: E402
from deploy.training.journal import looks_like_checkpoint  # noqa: E402
from tests.harness.fab import FAB  # noqa: E402
from tests.harness.images import build_busybox_image  # noqa: E402
from tests.harness.servers import S3Server, SshServer, wait_for  # noqa: E402
from tests.harness.pod import pod_bin  # noqa: E402

STEPS_PER_EPOCH = 64      # --data.samples=2048 / --data.batch_size=32
TRAIN_COMMAND = ("python -m deploy.training.demo fit --trainer.max_steps=1000000 --trainer.max_epochs=100000 "
                 "--trainer.enable_progress_bar=false --trainer.enable_model_summary=false "
                 "--checkpoint.every_n_train_steps=10 --checkpoint.save_top_k=-1 --checkpoint.monitor=null "
                 "--checkpoint.save_last=false --model.step_delay=0.05 --data.samples=2048 --data.batch_size=32 "
                 "--trainer.callbacks+=benchrec.StepRecorder")
RECORDER = '''"""Appends every trained step to steps.log in the working directory (the reliability benchmark)."""
from lightning.pytorch import Callback


class StepRecorder(Callback):
    def on_train_batch_end(self, trainer, *args):
        with open("steps.log", "a", encoding="utf-8") as handle:
            handle.write(f"{trainer.global_step}\\n")
'''
RESUMED = re.compile(r"entrypoint: resuming from (\S+) \(step (\d+)\)(.*)")
SAVED = re.compile(r"gpu-deploy: saved step (\d+) on stop([^\n]*)")
STEP_IN_NAME = re.compile(r"step=(\d+)")


@dataclass
class Row:
    what: str
    expected: str
    measured: str
    ok: bool | None   # None: informative, no expectation to meet

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**not met**", None: "note"}[self.ok]


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.loads.append(os.getloadavg()[0])
        print(f"\n[{row.verdict}] {row.what}\n  expected: {row.expected}\n  measured: {row.measured}", flush=True)

    def note(self, line: str) -> None:
        self.details.append(line)
        print(f"  . {line}", flush=True)


# ----------------------------------------------------------------------------- secrets in argv


class ArgvSampler(threading.Thread):
    """Reads every process's /proc/PID/cmdline over and over; keeps any that holds a secret value."""

    def __init__(self, secrets: list[str], interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.secrets = [s.encode() for s in secrets]
        self.interval = interval
        self.passes = 0
        self.seen: set[tuple[str, bytes]] = set()
        self.hits: dict[str, str] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        cmdline = handle.read()
                except OSError:
                    continue
                self.seen.add((pid, cmdline[:200]))
                if any(s in cmdline for s in self.secrets):
                    self.hits[pid] = cmdline[:120].replace(b"\0", b" ").decode(errors="replace")
            self.passes += 1
            self.stopped.wait(self.interval)


# ----------------------------------------------------------------------------- the bench


class Bench:
    """The servers, the operator's folders and every fab output, for the rows to share."""

    def __init__(self, tmp: Path, seed: int) -> None:
        self.tmp = tmp
        self.rng = random.Random(seed)
        self.secret = "bench-s3-secret-" + uuid.uuid4().hex
        self.operator_secret = "rp-bench-" + uuid.uuid4().hex
        self.s3 = S3Server(tmp / "moto", secret_key=self.secret).start()
        os.setpriority(os.PRIO_PROCESS, self.s3.proc.pid, 5)
        self.bucket = "bench-reliability"
        self.s3.client().create_bucket(Bucket=self.bucket)
        self.host = SshServer(tmp / "sshd-docker").start()
        self.pod = SshServer(tmp / "sshd-pod", path=f"{pod_bin(tmp / 'pod-bin')}:/usr/sbin:/sbin").start()
        self.docker = docker.from_env(timeout=600)
        self.outputs: list[str] = []
        self.remote_dirs: list[str] = []
        self.image = ""
        self.sampler = ArgvSampler([self.secret, self.operator_secret])
        self.sampler.start()

    def close(self) -> None:
        self.sampler.stopped.set()
        for remote_dir in self.remote_dirs:
            project = "gpu-deploy-" + Path(remote_dir).name
            for c in self.docker.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
                c.remove(force=True)
            meta = Path(remote_dir, ".gpu-deploy", "training.json")
            if meta.exists():
                try:
                    os.killpg(int(json.loads(meta.read_text())["pgid"]), signal.SIGKILL)
                except (OSError, ValueError, KeyError):
                    pass
            for pid_file in ("supervisor.pid",):
                path = Path(remote_dir, ".gpu-deploy", pid_file)
                if path.exists():
                    try:
                        os.kill(int(path.read_text().split()[0]), signal.SIGKILL)
                    except (OSError, ValueError):
                        pass
        for remote_dir in self.remote_dirs:  # each lives in a root of its own under /tmp
            shutil.rmtree(Path(remote_dir).parent, ignore_errors=True)
        if self.s3.proc is not None:
            os.kill(self.s3.proc.pid, signal.SIGCONT)  # in case a row stopped while it was frozen
        for server in (self.host, self.pod, self.s3):
            server.stop()
        if self.image:
            try:
                self.docker.images.remove(self.image, force=True)
            except docker.errors.APIError:
                pass

    def env(self, prefix: str) -> dict[str, str]:
        return {**self.s3.environ(self.bucket, prefix=prefix), "ENABLE_S3_SYNC": "1", "CHECKPOINT": "s3",
                "S3_SYNC_FLUSH_TIMEOUT": "30", "RUNPOD_API_KEY": self.operator_secret}

    def project(self, name: str, server: SshServer, values: dict[str, str]) -> tuple[Path, str]:
        """An operator's project folder (the recorder, requirements, .env) and a fresh REMOTE_DIR."""
        folder = self.tmp / name
        folder.mkdir()
        (folder / "benchrec.py").write_text(RECORDER)
        (folder / "requirements.txt").write_text("python-dotenv>=1.0\n")
        remote_dir = f"/tmp/gpu-deploy-bench-{uuid.uuid4().hex[:8]}/{name}"
        self.remote_dirs.append(remote_dir)
        write_env(folder, {
            **values, "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(server.port), "RUNPOD_USER": server.user,
            "RUNPOD_SSH_KEY": str(server.client_key), "SSH_KNOWN_HOSTS": str(folder / "known_hosts"),
            "REMOTE_DIR": remote_dir, "TRAIN_COMMAND": TRAIN_COMMAND})
        return folder, remote_dir

    def fab(self, folder: Path, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        started = time.monotonic()
        result = subprocess.run([FAB, "--search-root", str(REPO), *args], cwd=folder, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=clean_env())
        self.outputs.append(result.stdout + result.stderr)
        print(f"  fab {' '.join(args)}: exit {result.returncode} in {time.monotonic() - started:.1f} s", flush=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"fab {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result


def clean_env() -> dict[str, str]:
    """This process's environment without any setting a user's shell might carry."""
    from deploy.settings import ENV_FILE_VARIABLE, SETTING_KEYS

    drop = {*SETTING_KEYS, ENV_FILE_VARIABLE, "AWS_PROFILE", "AWS_CONFIG_FILE"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def write_env(folder: Path, values: dict[str, str]) -> None:
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def poll(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25) -> object:
    return wait_until(predicate, timeout, what, interval=interval)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- a running training


class Target:
    """One deployed training (compose or native): its log, its steps, its checkpoints, a kill -9."""

    def __init__(self, bench: Bench, runtime: str, folder: Path, remote_dir: str, prefix: str) -> None:
        self.bench, self.runtime, self.folder, self.remote_dir = bench, runtime, folder, remote_dir
        self.storage = Storage.from_settings(load_settings(environ=bench.env(prefix)))
        self._container_logs: dict[str, str] = {}  # a recreated container takes its logs along: keep them

    def log(self) -> str:
        if self.runtime == "native":
            path = Path(self.remote_dir, "train.log")
            return path.read_text(errors="replace") if path.exists() else ""
        for container in self.containers():
            try:
                self._container_logs[container.id] = container.logs().decode(errors="replace")
            except docker.errors.NotFound:
                pass
        return "".join(self._container_logs.values())

    def containers(self) -> list:
        project = "gpu-deploy-" + Path(self.remote_dir).name
        return self.bench.docker.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})

    def steps(self) -> list[int]:
        path = Path(self.remote_dir, "steps.log")
        return [int(s) for s in path.read_text().split()] if path.exists() else []

    def runs(self) -> int:
        return self.log().count("entrypoint: running")

    def resumes(self) -> list[re.Match]:
        return list(RESUMED.finditer(self.log()))

    def training_pid(self) -> int:
        """compose: the container's init (the entrypoint); native: the training's process group."""
        if self.runtime == "native":
            return int(json.loads(Path(self.remote_dir, ".gpu-deploy", "training.json").read_text())["pgid"])
        [container] = self.containers()
        container.reload()
        return int(container.attrs["State"]["Pid"])

    def kill9(self) -> None:
        pid = self.training_pid()
        if self.runtime == "native":
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)  # the container's init: the kernel kills the whole namespace
        poll(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 30, "the killed process to go")

    def local_checkpoints(self) -> dict[str, tuple[int, str, bool]]:
        """name -> (step, sha256, complete) of every .ckpt on the host (resume copies left out)."""
        found = {}
        for path in Path(self.remote_dir).rglob("*.ckpt"):
            if ".resume" in path.parts or any(p.startswith(".") for p in path.relative_to(self.remote_dir).parts[:-1]):
                continue
            match = STEP_IN_NAME.search(path.name)
            found[path.name] = (int(match.group(1)) if match else -1, sha256(path), looks_like_checkpoint(path))
        return found

    def in_s3(self) -> dict[str, CheckpointInfo]:
        return {c.name: c for c in list_checkpoints(self.storage)}

    def wait_training(self, after_runs: int, timeout: float = 180) -> None:
        """Until the run after ``after_runs`` starts and has trained a step."""
        poll(lambda: self.runs() > after_runs, timeout, f"{self.runtime}: the training to (re)start")
        count = len(self.steps())
        poll(lambda: len(self.steps()) > count, timeout, f"{self.runtime}: a trained step after the start")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def missing_or_changed(local: dict[str, tuple[int, str, bool]], stored: dict[str, CheckpointInfo]) -> list[str]:
    return [name for name, (_step, digest, complete) in local.items()
            if complete and (name not in stored or (stored[name].sha256 and stored[name].sha256 != digest))]


# ----------------------------------------------------------------------------- rows: crashes, outage, stop


def kill_rows(bench: Bench, target: Target, kills: int, report: Report) -> None:
    """kill -9 at ``kills`` random points; each restart's resume step and the checkpoints in S3."""
    results = []
    for i in range(kills):
        delay = bench.rng.uniform(1.0, 8.0)
        time.sleep(delay)
        at_kill_s3 = max((c.step or 0 for c in target.in_s3().values()), default=0)
        runs, resumes = target.runs(), len(target.resumes())
        trained = (target.steps() or [0])[-1]
        target.kill9()
        local = target.local_checkpoints()
        complete = {n: v for n, v in local.items() if v[2]}
        newest = max((v[0] for v in complete.values()), default=0)
        killed = time.monotonic()
        target.wait_training(runs)
        back = time.monotonic() - killed
        resumed = poll(lambda: target.resumes()[resumes:] and target.resumes()[-1], 60, "a resume line")
        step = int(resumed.group(2))
        try:
            poll(lambda: not missing_or_changed(complete, target.in_s3()), 120, "every checkpoint in S3")
        except TimeoutError:
            pass
        lost = missing_or_changed(complete, target.in_s3())
        results.append((delay, trained, at_kill_s3, newest, step, len(complete), len(local) - len(complete), lost))
        report.note(f"{target.runtime} kill {i + 1}: {delay:.1f} s into the run, last trained step {trained}, newest "
                    f"in S3 {at_kill_s3}, newest complete on disk {newest} ({len(complete)} files, "
                    f"{len(local) - len(complete)} torn); resumed from step {step} ({resumed.group(1)}), "
                    "training again "
                    f"{back:.0f} s after the kill; "
                    f"missing from S3 afterwards: {lost or 'none'}")
    exact = sum(1 for r in results if r[4] == r[3])
    lost = sum(len(r[7]) for r in results)
    files = sum(r[5] for r in results)
    at_least_s3 = sum(1 for r in results if r[4] >= r[2])
    lost_steps = [r[1] - r[4] for r in results]
    report.add(Row(
        f"{target.runtime}: kill -9 of training at {kills} random points (whole process tree, no flush); "
        "restarted by " + ("Docker's restart policy (`restart: on-failure`)" if target.runtime == "compose"
                           else "the native supervisor"),
        "each restart resumes from the newest complete checkpoint on disk at the kill (>= the newest in S3 then); "
        "0 checkpoints lost: every complete file on disk at the kill is in S3 (same sha256) afterwards",
        f"{exact}/{kills} resumed from the newest on disk, {at_least_s3}/{kills} at or past the newest in S3 "
        f"(resumed {[r[4] for r in results]}, newest in S3 at the kill {[r[2] for r in results]}); "
        f"{lost} of {files} checkpoint files missing or different in S3; steps trained since the resumed "
        f"checkpoint (lost to the kill, < 10 by design) {lost_steps}",
        exact == kills and lost == 0))


CATCH_UP = 90.0
"""Seconds the checkpoints get to reach S3 after the outage while training goes on."""


def outage_row(bench: Bench, target: Target, seconds: float, report: Report) -> dict[str, tuple[int, str, bool]]:
    """The S3 server frozen for ``seconds``: training goes on; everything reaches S3 afterwards.

    Returns the checkpoint files still missing from S3 then, for :func:`stop_row` to check after its flush.
    """
    pid, runs, before = target.training_pid(), target.runs(), (target.steps() or [0])[-1]
    names_before = set(target.local_checkpoints())
    os.kill(bench.s3.proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        time.sleep(seconds)
        during = (target.steps() or [0])[-1]
    finally:
        os.kill(bench.s3.proc.pid, signal.SIGCONT)
    frozen = time.monotonic() - started
    local = {n: v for n, v in target.local_checkpoints().items() if v[2]}
    written = len(set(local) - names_before)
    resumed_at = time.monotonic()
    try:
        poll(lambda: not missing_or_changed(local, target.in_s3()), CATCH_UP, "every checkpoint in S3 after the outage")
        caught_up = f"all {len(local)} checkpoint files in S3 {time.monotonic() - resumed_at:.0f} s after it"
    except TimeoutError:
        caught_up = (f"{CATCH_UP:.0f} s after it, {len(missing_or_changed(local, target.in_s3()))} of {len(local)} "
                     "still missing while training went on")
    lost = missing_or_changed(local, target.in_s3())
    same = target.training_pid() == pid and target.runs() == runs
    report.add(Row(
        f"{target.runtime}: the S3 server frozen (SIGSTOP, requests hang) for {frozen:.0f} s mid-training",
        "training goes on (same process, steps advance); every checkpoint is in S3 afterwards",
        f"{during - before} steps trained during the outage (step {before} -> {during}), {written} checkpoints "
        f"written meanwhile; {'same process, no restart' if same else 'the training restarted'}; {caught_up}",
        during > before and same and not lost))
    return {name: local[name] for name in lost}


def stop_row(bench: Bench, target: Target, report: Report,
             missing: dict[str, tuple[int, str, bool]] | None = None) -> None:
    """``fab stop`` mid-epoch, then redeploy: resumes at exactly the saved step.

    ``missing``: checkpoints the outage left out of S3; the stop's flush should send them.
    """
    time.sleep(bench.rng.uniform(1.0, 6.0))
    stopped = bench.fab(target.folder, "stop")
    if missing:
        still = missing_or_changed(missing, target.in_s3())
        report.add(Row(
            f"{target.runtime}: the {len(missing)} checkpoints still missing from S3 after the outage, once "
            "`fab stop` (below) flushed the uploads",
            "all of them in S3",
            f"{len(missing) - len(still)} of {len(missing)} in S3 after the stop",
            not still))
    trained = (target.steps() or [0])[-1]
    count = len(target.steps())
    saves = SAVED.findall(target.log())
    saved = int(saves[-1][0]) if saves else None
    stored = [c for c in target.in_s3().values() if c.name.startswith("stop-")]
    in_s3 = saved is not None and any(c.step == saved for c in stored)
    reported = saved is not None and str(saved) in stopped.stdout
    runs, resumes = target.runs(), len(target.resumes())
    bench.fab(target.folder, "deploy-runpod")
    target.wait_training(runs)
    resumed = int(poll(lambda: target.resumes()[resumes:] and target.resumes()[-1], 60, "a resume line").group(2))
    poll(lambda: len(target.steps()) >= count + 3, 60, "three steps after the resume")
    after = target.steps()[count:count + 3]
    report.note(f"{target.runtime} stop: fab stop said {stopped.stdout.strip()!r}; training log: "
                f"{(saves[-1][1].strip(', ') if saves else 'no saved-on-stop line')}")
    report.add(Row(
        f"{target.runtime}: `fab stop` at a random point mid-epoch, then `fab deploy-runpod`",
        "the step trained last is saved on stop and in S3; the redeploy resumes at exactly that step "
        "(the next step trained is that + 1)",
        f"last trained step {trained} (step {trained % STEPS_PER_EPOCH} of a {STEPS_PER_EPOCH}-step epoch), "
        f"saved on stop: {saved}, in S3: {'yes' if in_s3 else 'no'}; resumed at {resumed}, next steps trained "
        f"{after}",
        saved == trained == resumed and in_s3 and after[:1] == [trained + 1]))
    report.add(Row(
        f"{target.runtime}: what `fab stop` prints for that stop",
        "it reports the step it saved",
        f"{stopped.stdout.strip()!r}; names the step: {'yes' if reported else 'no'} (the training log has "
        f"`gpu-deploy: saved step {saved} on stop`)",
        reported))


def truncated_row(bench: Bench, target: Target, prefix: str, report: Report) -> None:
    """The newest checkpoint in S3 cut in half (metadata kept); a fresh host must skip it and say so."""
    bench.fab(target.folder, "stop")
    ordered = list_checkpoints(target.storage)
    newest, previous = ordered[-1], ordered[-2]
    client, bucket = target.storage.client, target.storage.bucket
    head = client.head_object(Bucket=bucket, Key=newest.key)
    body = client.get_object(Bucket=bucket, Key=newest.key)["Body"].read()
    client.put_object(Bucket=bucket, Key=newest.key, Body=body[: len(body) // 2], Metadata=head["Metadata"])
    folder, remote_dir = bench.project("compose-fresh", bench.host, {**bench.env(prefix), "IMAGE": bench.image})
    fresh = Target(bench, "compose", folder, remote_dir, prefix)
    bench.fab(folder, "deploy-runpod")
    fresh.wait_training(0)
    [resumed] = fresh.resumes()[:1]
    says = newest.name in resumed.group(3) and "failed verification" in resumed.group(3)
    report.note(f"truncated: {newest.name} ({len(body)} -> {len(body) // 2} bytes); entrypoint said: "
                f"{resumed.group(0)[:400]}")
    report.add(Row(
        "the newest checkpoint in S3 truncated to half its bytes (its sha256/size metadata kept), then a "
        "deploy to a fresh REMOTE_DIR (a new host, nothing on its disk)",
        f"resume uses the previous one (step {previous.step}) and the log names the skipped one and why",
        f"resumed from step {resumed.group(2)} ({resumed.group(1).rsplit('/', 1)[-1]}); the skipped checkpoint "
        f"named with a reason: {'yes' if says else 'no'}",
        int(resumed.group(2)) == previous.step and says))
    bench.fab(folder, "stop")


# ----------------------------------------------------------------------------- rows: push, host key


LAYER_MB = 64


def in_s3_so_far(client, bucket: str, images: str) -> tuple[int, bool]:  # noqa: ANN001 - a boto3 client
    """Bytes under ``images`` (objects and parts of open uploads), and whether a layer's upload is open
    with some of its parts sent."""
    done = sum(o["Size"] for o in client.list_objects_v2(Bucket=bucket, Prefix=images).get("Contents", []))
    inside = False
    for upload in client.list_multipart_uploads(Bucket=bucket, Prefix=images).get("Uploads", []):
        try:
            parts = client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except client.exceptions.NoSuchUpload:
            continue  # completed meanwhile: the next listing counts it as an object
        done += sum(p["Size"] for p in parts.get("Parts", []))
        inside = inside or bool(parts.get("Parts"))
    return done, inside


def kill_mid_layer(proc: subprocess.Popen, client, bucket: str, images: str, total: int) -> int:  # noqa: ANN001
    """SIGKILL the push once 45 % is in S3 and a layer's upload is half-sent; returns the bytes in S3 then.

    The push is frozen (SIGSTOP) while the listing is checked again, so the kill cannot land on a layer
    boundary: a frozen client cannot complete an upload (a part already sent may still land).
    """
    while True:
        done, inside = in_s3_so_far(client, bucket, images)
        if done >= 0.45 * total and inside:
            os.killpg(proc.pid, signal.SIGSTOP)
            time.sleep(0.5)
            done, inside = in_s3_so_far(client, bucket, images)
            if inside:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return done
            os.killpg(proc.pid, signal.SIGCONT)
        if proc.poll() is not None:
            raise RuntimeError(f"the push ended (exit {proc.returncode}) before it could be killed mid-layer")
        time.sleep(0.02)


def push_row(bench: Bench, folder: Path, prefix: str, report: Report) -> None:
    """A push of a 5-layer image killed mid-layer at about half its bytes; the rerun's reuse and leftovers."""
    layers = "".join(f"RUN head -c {LAYER_MB}000000 /dev/urandom > /layer{i}\n" for i in range(5))
    tag = build_busybox_image(bench.docker, bench.tmp / "layered", tag="gpu-deploy-bench/layered:v1", extra=layers)
    count = len(bench.docker.images.get(tag).attrs["RootFS"]["Layers"])
    client, images = bench.s3.client(), f"{prefix}/docker-images/"
    total = 5 * LAYER_MB * 1_000_000
    proc = subprocess.Popen([FAB, "--search-root", str(REPO), "image-to-s3", f"--image={tag}"], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(),
                            start_new_session=True)
    at_kill = kill_mid_layer(proc, client, bench.bucket, images, total)
    time.sleep(2.0)  # requests the killed push had in flight land (or fail) at the server first
    records = [o["Key"] for o in client.list_objects_v2(Bucket=bench.bucket, Prefix=images).get("Contents", [])
               if o["Key"].endswith(".json") and "/layers/" in o["Key"]]
    left_by_kill = client.list_multipart_uploads(Bucket=bench.bucket, Prefix=images).get("Uploads", [])
    open_after_kill = len(left_by_kill)
    started = time.monotonic()
    rerun = bench.fab(folder, "image-to-s3", f"--image={tag}")
    seconds = time.monotonic() - started
    text = rerun.stdout + rerun.stderr
    skipped = re.search(r"skipped (\d+)", text)
    open_after = client.list_multipart_uploads(Bucket=bench.bucket, Prefix=images).get("Uploads", [])
    report.note(f"push: killed at {at_kill / 1e6:.0f} of {total / 1e6:.0f} MB; layer records then {len(records)}; "
                f"open multipart uploads then {[u['Key'].rsplit('/', 2)[-2:] for u in left_by_kill]}, after the "
                f"rerun {[u['Key'].rsplit('/', 2)[-2:] for u in open_after]}; "
                f"rerun said: {text.strip().splitlines()[-1][:300]!r}")
    swept = ""
    if open_after:
        bench.fab(folder, "s3.abort-uploads", "--older-than=0")
        left = client.list_multipart_uploads(Bucket=bench.bucket, Prefix=images).get("Uploads", [])
        swept = f"; `fab s3.abort-uploads --older-than=0` then left {len(left)}"
    report.add(Row(
        f"`fab image-to-s3` of a {count}-layer image (busybox and 5 x {LAYER_MB} MB random layers) killed "
        f"(SIGKILL) in the middle of a layer at {100 * at_kill / total:.0f} % of its bytes, then run again",
        "the rerun reuses the layers finished before the kill and completes; no multipart upload left open "
        "after the rerun",
        f"layers finished before the kill: {len(records)}; the rerun skipped "
        f"{skipped.group(1) if skipped else '?'} and took {seconds:.1f} s; open multipart uploads after the "
        f"kill {open_after_kill}, after the rerun {len(open_after)}{swept}",
        bool(skipped) and int(skipped.group(1)) >= len(records) and not open_after))
    try:
        bench.docker.images.remove(tag, force=True)
    except docker.errors.APIError:
        pass


def hostkey_row(bench: Bench, prefix: str, report: Report) -> None:
    """A host whose key changed since it was recorded: refused before login, nothing sent."""
    server = bench.host
    config = server.workdir / "sshd_config"
    config.write_text(config.read_text().replace("LogLevel ERROR", "LogLevel VERBOSE"))
    os.kill(server.proc.pid, signal.SIGHUP)  # sshd -D re-executes itself with the new config
    time.sleep(1.0)
    wait_for(lambda: _banner(server.port), 20, "sshd after SIGHUP")
    folder, remote_dir = bench.project("hostkey", server, {**bench.env(prefix), "IMAGE": "unused:v0"})
    other = bench.tmp / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = Path(f"{other}.pub").read_text().split()[:2]
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {kind} {key}\n")
    log = server.workdir / "sshd.log"
    logins_before = log.read_text(errors="replace").count("Accepted publickey")
    refused = bench.fab(folder, "deploy-runpod", check=False)
    logins = log.read_text(errors="replace").count("Accepted publickey") - logins_before
    unchanged = known.read_text() == f"[127.0.0.1]:{server.port} {kind} {key}\n"
    exists = Path(remote_dir).exists()
    line = (refused.stderr.strip() or refused.stdout.strip()).splitlines()[-1:] or [""]
    known.write_text(server.known_hosts.read_text())
    control = bench.fab(folder, "status", check=False)
    control_logins = log.read_text(errors="replace").count("Accepted publickey") - logins_before - logins
    report.note(f"host key: fab said {line[0][:300]!r}; control `fab status` with the right key: exit "
                f"{control.returncode}, {control_logins} login(s) in the sshd log")
    report.add(Row(
        "`fab deploy-runpod` to a host whose key differs from the one in SSH_KNOWN_HOSTS",
        "refused with one sentence naming the host and how to fix it, exit 1; no login (sshd log at VERBOSE), "
        "nothing on the host, known_hosts untouched",
        f"exit {refused.returncode}, traceback: {'yes' if 'Traceback' in refused.stderr else 'no'}, "
        f"message names the changed key: {'yes' if 'host key' in line[0] and 'changed' in line[0] else 'no'}; "
        f"logins {logins} (the control with the right key: {control_logins}); REMOTE_DIR created: "
        f"{'yes' if exists else 'no'}; known_hosts untouched: {'yes' if unchanged else 'no'}",
        refused.returncode == 1 and logins == 0 and control_logins > 0 and not exists and unchanged
        and "Traceback" not in refused.stderr))


def _banner(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        return sock.recv(4).startswith(b"SSH-")


# ----------------------------------------------------------------------------- rows: secrets


def secret_rows(bench: Bench, targets: list[Target], report: Report) -> None:
    """Argv samples, logs, printed output, host files, the bucket and the image, grepped for secrets."""
    secrets = [bench.secret.encode(), bench.operator_secret.encode()]

    def holds(data: bytes) -> bool:
        return any(s in data for s in secrets)

    argv_row(bench, report)
    logs_row(bench, targets, holds, report)
    at_rest_row(bench, holds, report)
    if bench.image:
        image_rows(bench, targets, holds, report)


def argv_row(bench: Bench, report: Report) -> None:
    sampler = bench.sampler
    sampler.stopped.set()
    sampler.join(5)
    report.add(Row(
        "secrets in argv: /proc/*/cmdline of every process on this machine (operator side and host side: "
        "fab, ssh, rsync, sshd sessions, supervisor, entrypoint, training, upload helper, containers), "
        "sampled every 0.2 s during every deploy, training run, stop and push above",
        "no process's argv holds AWS_SECRET_ACCESS_KEY or RUNPOD_API_KEY",
        f"{sampler.passes} passes, {len(sampler.seen)} distinct (pid, argv) seen; holding a secret: "
        f"{len(sampler.hits)}{' ' + str(list(sampler.hits.values())) if sampler.hits else ''}",
        not sampler.hits))


def logs_row(bench: Bench, targets: list[Target], holds: Callable[[bytes], bool], report: Report) -> None:
    logs = {f"{t.runtime} training log {Path(t.remote_dir).name}": t.log().encode() for t in targets}
    bad_logs = [name for name, data in logs.items() if holds(data)]
    printed = [i for i, text in enumerate(bench.outputs) if holds(text.encode())]
    report.add(Row(
        "secrets in logs and printed output: every `fab` stdout/stderr of this run, the training logs "
        "(`docker logs` of every container, the native train.log with the supervisor's lines)",
        "no secret value anywhere",
        f"{len(bench.outputs)} fab outputs, {len(logs)} logs ({sum(len(d) for d in logs.values()) / 1e3:.0f} kB); "
        f"holding a secret: {len(printed)} outputs, {bad_logs or 'no logs'}",
        not printed and not bad_logs))


def at_rest_row(bench: Bench, holds: Callable[[bytes], bool], report: Report) -> None:
    files, bad = 0, []
    for remote_dir in bench.remote_dirs:
        root = Path(remote_dir)
        for path in (root.rglob("*") if root.exists() else []):
            if path.is_file() and path.name != ".env" and not path.is_symlink():
                files += 1
                if holds(path.read_bytes()):
                    bad.append(str(path.relative_to(root)))
    modes = sorted({oct(Path(d, ".env").stat().st_mode & 0o777) for d in bench.remote_dirs if Path(d, ".env").exists()})
    client, objects = bench.s3.client(), 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bench.bucket):
        for obj in page.get("Contents", []):
            if "/docker-images/" in obj["Key"] or obj["Size"] > 50_000_000:
                continue
            objects += 1
            if holds(client.get_object(Bucket=bench.bucket, Key=obj["Key"])["Body"].read()):
                bad.append(obj["Key"])
    report.add(Row(
        "secrets at rest: every file under every REMOTE_DIR but `.env` (compose file, run.json, code, "
        "journals, checkpoints, lightning_logs, steps) and every object in the bucket but image layers",
        "no secret value anywhere but the host's `.env` (mode 0600)",
        f"{files} host files, {objects} objects; holding a secret: {bad or 'none'}; host .env modes {modes}",
        not bad and set(modes) <= {"0o600"}))


def image_rows(bench: Bench, targets: list[Target], holds: Callable[[bytes], bool], report: Report) -> None:
    found, size, tail = False, 0, b""
    with subprocess.Popen(["docker", "save", bench.image], stdout=subprocess.PIPE) as save:
        while chunk := save.stdout.read(1 << 20):
            size += len(chunk)
            found = found or holds(tail + chunk)
            tail = chunk[-200:]
    config_env = bench.docker.images.get(bench.image).attrs["Config"].get("Env") or []
    in_config = any(holds(e.encode()) for e in config_env)
    report.add(Row(
        "secrets in the training image: the bytes of `docker save` and the image config's env (`docker inspect`)",
        "no secret value in the image",
        f"{size / 1e9:.2f} GB saved, holding a secret: {'yes' if found else 'no'}; image env holding one: "
        f"{'yes' if in_config else 'no'}",
        not found and not in_config))
    envs = [c.attrs["Config"].get("Env") or [] for t in targets if t.runtime == "compose" for c in t.containers()]
    with_s3 = sum(1 for env in envs if any(bench.secret in e for e in env))
    with_operator = sum(1 for env in envs if any(bench.operator_secret in e for e in env))
    report.add(Row(
        "the running container's env (`docker inspect` of the compose containers)",
        "informative: the service reads REMOTE_DIR/.env through `env_file`, so the container's env holds the "
        "S3 secret (visible to whoever can use the host's Docker engine, as the .env file is to its owner); "
        "never RUNPOD_API_KEY",
        f"{with_s3} of {len(envs)} containers hold the S3 secret in their env, {with_operator} hold RUNPOD_API_KEY",
        None if not with_operator else False))


# ----------------------------------------------------------------------------- setup, report, main


def training_image(bench: Bench) -> str:
    from deploy.dev.baseimage import ensure_base_image

    base = ensure_base_image(bench.docker).tag
    tag = f"gpu-deploy-bench-train:{uuid.uuid4().hex[:8]}"
    bench.docker.images.build(path=str(REPO), dockerfile="docker/Dockerfile", tag=tag, rm=True, forcerm=True,
                              buildargs={"BASE_IMAGE": base}, network_mode="none")
    return tag


def machine() -> str:
    cpus, mem = os.cpu_count(), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    engine = docker.from_env().version().get("Version", "?")
    return f"{platform.node()}: {platform.system()} {platform.release()}, {cpus} CPUs, {mem:.0f} GB, " \
           f"Docker {engine}, " \
           f"Python {platform.python_version()}"


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--short", "--", "deploy", "tasks", "docker", "docker-compose.runpod.yml"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return head + (" (with uncommitted changes under deploy/ or tasks/ by other work)" if dirty else "")


MANAGED = ("<!-- managed-runs -->", "<!-- /managed-runs -->")
NOTES = "## Reading the figures"
"""A hand-written section of the report from this heading on is kept when the script rewrites it."""


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(report: Report) -> list[str]:
    """The rows as a Markdown table (bench_managed's section uses it too)."""
    return (["| what was done | expected | measured | |", "| --- | --- | --- | --- |"]
            + [f"| {cell(r.what)} | {cell(r.expected)} | {cell(r.measured)} | {r.verdict} |" for r in report.rows])


def write_report(path: Path, report: Report, header: dict[str, str]) -> None:
    lines = ["# Reliability figures", "",
             "What happens to a run when things go wrong, measured against the real parts: an OpenSSH server, "
             "moto's S3 server and the Docker engine on one machine. Generated by `benchmarks/bench_reliability.py`; "
             "the verdicts are the script's, not edited.", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", *table(report)]
    lines += ["", "## Details", ""] + [f"- {cell(d)}" for d in report.details]
    lines += ["", "## Rerun", "", "```bash", ".venv/bin/python -m benchmarks.bench_reliability --seed "
              f"{header['seed']}            # as root: it reads /proc and signals containers",
              "```", ""]
    kept = path.read_text() if path.exists() else ""
    notes = kept[kept.index(NOTES):] if NOTES in kept else ""
    managed = kept[kept.index(MANAGED[0]):kept.index(MANAGED[1]) + len(MANAGED[1])] \
        if MANAGED[0] in kept and MANAGED[1] in kept else ""  # benchmarks/bench_managed.py's section
    path.write_text("\n".join(lines) + ("\n" + managed + "\n" if managed else "") + ("\n" + notes if notes else ""))


def compose_rows(bench: Bench, prefix: str, args: argparse.Namespace, report: Report) -> list[Target]:
    """The training image pushed, a compose deploy, then the kills, the outage, the stop, the truncation."""
    bench.image = training_image(bench)
    folder, remote_dir = bench.project("compose", bench.host, {**bench.env(prefix), "IMAGE": bench.image})
    bench.fab(folder, "image-to-s3")
    compose = Target(bench, "compose", folder, remote_dir, prefix)
    bench.fab(folder, "deploy-runpod")
    compose.wait_training(0)
    kill_rows(bench, compose, args.kills, report)
    missing = outage_row(bench, compose, args.outage, report)
    stop_row(bench, compose, report, missing)
    truncated_row(bench, compose, prefix, report)
    fresh = [d for d in bench.remote_dirs if d.endswith("/compose-fresh")]
    return [compose, *(Target(bench, "compose", bench.tmp / "compose-fresh", d, prefix) for d in fresh)]


def native_rows(bench: Bench, prefix: str, args: argparse.Namespace, report: Report) -> list[Target]:
    """A native deploy on the pod, then the kills, the outage and the stop."""
    folder, remote_dir = bench.project("native", bench.pod, {**bench.env(prefix), "NATIVE_PYTHON": sys.executable})
    native = Target(bench, "native", folder, remote_dir, prefix)
    bench.fab(folder, "deploy-runpod")
    native.wait_training(0)
    kill_rows(bench, native, args.kills, report)
    missing = outage_row(bench, native, args.outage, report)
    stop_row(bench, native, report, missing)
    bench.fab(folder, "stop")
    return [native]


def run(args: argparse.Namespace, seed: int, report: Report) -> None:
    only = set(args.only.split(","))
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        bench = Bench(Path(tmp), seed)
        try:
            prefix = f"rel-{uuid.uuid4().hex[:6]}"
            if "hostkey" in only:
                hostkey_row(bench, prefix, report)
            if "compose" in only:
                targets += compose_rows(bench, prefix, args, report)
            if "native" in only:
                targets += native_rows(bench, f"{prefix}-native", args, report)
            if "push" in only:
                folder = bench.tmp / "push"
                folder.mkdir()
                write_env(folder, bench.env(f"{prefix}-push"))
                push_row(bench, folder, f"{prefix}-push", report)
            if "secrets" in only:
                secret_rows(bench, targets, report)
        finally:
            bench.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="seed of the random points (default: a fresh one)")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the S3 server is frozen")
    parser.add_argument("--only", default="hostkey,compose,native,push,secrets")
    parser.add_argument("--out", default=str(REPO / "docs" / "reliability.md"))
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"seed {seed} (rerun with --seed {seed}); load average {os.getloadavg()}", flush=True)
    started, report, first = time.monotonic(), Report(), commit()
    report.loads.append(os.getloadavg()[0])
    run(args, seed, report)
    last = commit()
    minutes = (time.monotonic() - started) / 60
    loads = [*report.loads, os.getloadavg()[0]]
    header = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "commit": first if first == last else f"{first} at the start, {last} at the end (other work landed "
                                               "meanwhile; every `fab` and training process ran the tree of its time)",
        "seed": str(seed),
        "load": f"1-minute load average {min(loads):.1f}-{max(loads):.1f} over the run (start {loads[0]:.1f}, "
                f"end {loads[-1]:.1f}): the 2 cores were shared with other test suites and builds",
        "duration": f"{minutes:.1f} min",
        "training": f"the demo model on the CPU: `{TRAIN_COMMAND}`",
    }
    write_report(Path(args.out), report, header)
    print(f"\nwrote {args.out}: {sum(1 for r in report.rows if r.ok)} met, "
          f"{sum(1 for r in report.rows if r.ok is False)} not met, in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
