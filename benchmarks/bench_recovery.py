"""Recovery from a lost pod: how long from the loss to training running again on the replacement.

    .venv/bin/python -m benchmarks.bench_recovery [--modes exited,vanished] [--pull-delay 0] [--lost-after 20]

Runs ``fab train`` as an operator does (a subprocess in a project folder) against this machine's
moto S3 server and the local RunPod control plane (:mod:`deploy.dev.runpod_server`), whose pods are
real containers with sshd, Python and torch on the host's network. Training is the demo model on the
CPU (a step every 0.25 s, a checkpoint every 10 steps) with a step recorder that appends
``<step> <epoch seconds>`` to ``steps.log`` on the pod. Once a checkpoint of step 20 is in S3 the
control plane loses the pod:

- ``exited``: RunPod reclaims it (``desiredStatus`` EXITED, the container killed): the API says so at once;
- ``vanished``: the machine dies (the pod stays RUNNING, ``runtime`` null): only the missing runtime
  shows it, and the watcher waits ``LOST_AFTER_SECONDS`` before calling it lost.

The parts, from the watcher's ledger events and the new pod's ``steps.log`` (one clock: one machine):

- detection: loss -> the ``preempted``/``lost`` event, written just before the create call (so
  this is also "loss -> replacement requested");
- provisioning: that event -> ``provisioned`` (the create call, the pull delay, sshd answering);
- deploy: ``provisioned`` -> ``deployed`` (the deploy flow: probe, code sync, virtualenv, .env,
  supervisor start, until training says it started);
- resume: ``deployed`` -> the first step above the lost one in the new pod's ``steps.log``
  (Python and Lightning start, the newest checkpoint downloaded from S3 and loaded, one step).

Prints a Markdown table (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from deploy.dev.podimage import ensure_pod_image  # noqa: E402
from deploy.dev.runpod_server import RunPodServer  # noqa: E402
from deploy.ledger.store import read_run  # noqa: E402
from deploy.settings import load_settings  # noqa: E402
from deploy.storage import Storage  # noqa: E402
from deploy.storage.checkpoints import latest_checkpoint  # noqa: E402
from tests.harness.fab import FAB  # noqa: E402
from tests.harness.servers import S3Server  # noqa: E402

API_KEY = "rp-bench-" + uuid.uuid4().hex[:8]
STEP_DELAY = 0.25
MAX_STEPS = 160
TRAIN_COMMAND = (f"python -m deploy.training.demo fit --trainer.max_steps={MAX_STEPS} --trainer.max_epochs=1000 "
                 "--trainer.enable_progress_bar=false --checkpoint.every_n_train_steps=10 --checkpoint.save_top_k=-1 "
                 f"--checkpoint.monitor=null --model.step_delay={STEP_DELAY} --trainer.callbacks+=benchrec.StepRecorder")
RECORDER = '''"""Appends "<global step> <epoch seconds>" to steps.log in the working directory (bench_recovery)."""
import time

from lightning.pytorch import Callback


class StepRecorder(Callback):
    def on_train_batch_end(self, trainer, *args):
        with open("steps.log", "a", encoding="utf-8") as handle:
            handle.write(f"{trainer.global_step} {time.time():.3f}\\n")
'''
STEPS_LOG = "/workspace/train/steps.log"


@dataclass
class Recovery:
    mode: str
    lost_step: int
    resumed_step: int
    detection: float
    provisioning: float
    deploy: float
    resume: float
    finished: bool

    @property
    def total(self) -> float:
        return self.detection + self.provisioning + self.deploy + self.resume


def project_folder(root: Path) -> Path:
    project = root / "project"
    (project / "benchrec").mkdir(parents=True)
    (project / "benchrec" / "__init__.py").write_text(RECORDER)
    return project


def first_step_after(server: RunPodServer, pod_id: str, lost_step: int, deadline: float) -> tuple[int, float]:
    """(step, when) of the first step above ``lost_step`` the pod's training recorded."""
    while time.time() < deadline:
        try:
            out = server.container(pod_id).exec_run(["cat", STEPS_LOG]).output.decode()
        except Exception:  # noqa: BLE001 - the pod may not be there yet
            out = ""
        for line in out.splitlines():
            step, _, when = line.partition(" ")
            if step.isdigit() and int(step) > lost_step:
                return int(step), float(when)
        time.sleep(0.25)
    raise SystemExit(f"no step above {lost_step} on pod {pod_id} in time")


def run_once(mode: str, server: RunPodServer, s3: S3Server, bucket: str, lost_after: int) -> Recovery:
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        root = Path(tmp)
        key = root / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        env = {**s3.environ(bucket, prefix=f"recovery-{mode}-{uuid.uuid4().hex[:6]}"),
               "RUNPOD_API_BASE_URL": server.url, "RUNPOD_API_KEY": API_KEY, "RUNPOD_SSH_KEY": str(key),
               "SSH_KNOWN_HOSTS": str(root / "known_hosts"), "POD_GPU_TYPES": "NVIDIA L40S,NVIDIA RTX A6000",
               "POD_VOLUME_GB": "20", "REMOTE_DIR": "/workspace/train", "TRAIN_COMMAND": TRAIN_COMMAND,
               "LOST_AFTER_SECONDS": str(lost_after)}
        storage = Storage.from_settings(load_settings(overrides={k: v for k, v in env.items()
                                                                 if k.startswith(("AWS_", "S3_"))}))
        project = project_folder(root)
        out = open(root / "train.out", "w")
        proc = subprocess.Popen([FAB, "--search-root", str(REPO), "train", "--api-every", "2", "--ssh-every", "10",
                                 "--results", str(root / "results")], cwd=project, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env}, stdin=subprocess.DEVNULL)
        try:
            deadline = time.time() + 600
            while not ((c := latest_checkpoint(storage)) and (c.step or 0) >= 20):
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit("fab train ended before a checkpoint:\n" + (root / "train.out").read_text())
                time.sleep(0.5)
            (first,) = server.pods
            lost_step = latest_checkpoint(storage).step or 0
            lost_at = time.time()
            server.lose_pod(first, how=mode)
            while not (others := [p for p in server.pods if p != first]) and time.time() < deadline:
                time.sleep(0.1)
            resumed_step, stepped_at = first_step_after(server, others[0], lost_step, deadline)
            proc.wait(timeout=max(1, deadline - time.time()))
        finally:
            if proc.poll() is None:
                proc.kill()
            out.close()
        text = (root / "train.out").read_text()
        run_id = next(line.split()[1] for line in text.splitlines() if line.startswith("run       "))
        events = read_run(storage, run_id).events

        def first_event(kinds: tuple[str, ...], after: float) -> float:
            return next(e.at.timestamp() for e in events if e.kind in kinds and e.at.timestamp() >= after)

        detected = first_event(("preempted", "lost"), lost_at)
        provisioned = first_event(("provisioned",), detected)
        deployed = first_event(("deployed",), provisioned)
        return Recovery(mode, lost_step, resumed_step, detected - lost_at, provisioned - detected,
                        deployed - provisioned, stepped_at - deployed, proc.returncode == 0 and "finished" in text)


def table(rows: list[Recovery], pull_delay: float, lost_after: int) -> str:
    lines = [f"Measured {datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, {os.cpu_count()} cores (shared), "
             f"pull delay {pull_delay:g} s, LOST_AFTER_SECONDS={lost_after}, watcher polls the API every 2 s.",
             "",
             "| loss | detection | provisioning | deploy | resume | loss -> training again | lost at step | "
             "resumed past | run finished |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r.mode} | {r.detection:.1f} s | {r.provisioning:.1f} s | {r.deploy:.1f} s | {r.resume:.1f} s "
                     f"| {r.total:.1f} s | {r.lost_step} | {r.resumed_step} | {'yes' if r.finished else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="exited,vanished")
    parser.add_argument("--pull-delay", type=float, default=0.0, help="Seconds before a new pod's runtime appears.")
    parser.add_argument("--lost-after", type=int, default=20, help="LOST_AFTER_SECONDS for the watcher.")
    parser.add_argument("--out", help="Also write the table to this file.")
    args = parser.parse_args()
    client = docker.from_env(timeout=900)
    image = ensure_pod_image(client).tag
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as s3_dir:
        s3 = S3Server(Path(s3_dir)).start()
        server = RunPodServer(client, image, api_key=API_KEY, host_network=True, pull_delay=args.pull_delay).start()
        try:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3.client().create_bucket(Bucket=bucket)
            rows = []
            for mode in args.modes.split(","):
                print(f"{mode}: running fab train, then losing its pod ...", flush=True)
                rows.append(run_once(mode, server, s3, bucket, args.lost_after))
                server.cleanup()
        finally:
            server.stop()
            s3.stop()
    report = table(rows, args.pull_delay, args.lost_after)
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
