"""Managed runs on the unhappy paths: pods leaked, spend past the limits, time from a limit to the pod's end.

    .venv/bin/python -m benchmarks.bench_managed [--only limit,unreachable,kill9,replace,zombie]
                                                 [--out docs/reliability.md]

Everything runs against the real parts on this machine: moto's S3 server, the local RunPod control plane
(:mod:`deploy.dev.runpod_server`) whose pods are real containers with sshd (host networking, so they
reach the S3 server), and ``fab train`` / ``fab train.watch`` as a user runs them, in a subprocess, from a
project folder. What RunPod would have billed is the control plane's bill per pod (created to terminated,
wall clock); what the run recorded is the watcher's signed state and the run ledger.

Rows:

- ``limit``: MAX_SPEND reached while the pod answers: overspend in dollars and seconds of the pod, time
  from the limit to the pod's termination;
- ``unreachable``: the same with the pod's sshd killed first (the pod RUNNING, SSH refused);
- ``kill9``: MAX_HOURS set, the watcher killed with kill -9 after the deploy: when the pod ended itself
  against its deadline, the step it saved, the spend past the limit;
- ``replace``: the pod reclaimed (EXITED) with its terminate failing twice, the replacement's create
  answer lost, Ctrl-C while the replacement boots, then ``fab train.watch``: pods made, pods left;
- ``zombie``: sshd killed in a RUNNING pod whose terminate keeps failing: time to the replacement, and
  checkpoint objects the old pod wrote after the replacement claimed the run.

Every row also says pods left billing (API list and containers) and the recorded spend against the bill.
The rows go into the ``Managed runs`` section of ``--out`` (the rest of the file is the reliability
benchmark's; each script keeps the other's section). About 15 minutes on 2 cores; run it as root, as the
tests run here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from benchmarks.bench_reliability import Report, Row, commit, machine, table  # noqa: E402
from deploy.dev.podimage import ensure_pod_image  # noqa: E402
from deploy.dev.runpod_server import LABEL, RunPodServer  # noqa: E402
from deploy.settings import Secret  # noqa: E402
from deploy.storage.checkpoints import latest_checkpoint, list_checkpoints  # noqa: E402
from deploy.watch.record import StateStore  # noqa: E402
from tests.harness.managed import MAX_STEPS, TRAIN_COMMAND, Train, recorded_spend, storage_for  # noqa: E402
from tests.harness.runpod import ssh_key_pair  # noqa: E402
from tests.harness.servers import S3Server  # noqa: E402
from tests.harness.waiting import wait_until  # noqa: E402

START, END = "<!-- managed-runs -->", "<!-- /managed-runs -->"
FAST = ("--api-every", "1", "--ssh-every", "3", "--timeout", "180")
ENDLESS = TRAIN_COMMAND.replace(f"max_steps={MAX_STEPS}", "max_steps=-1")
PRICE = 0.79  # the plane's L40S on the community cloud: the first GPU type of the list has capacity


class Bench:
    """The S3 server, the control plane and one operator folder per row."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.s3 = S3Server(tmp / "moto").start()
        self.bucket = "bench-managed"
        self.s3.client().create_bucket(Bucket=self.bucket)
        self.docker = docker.from_env(timeout=600)
        self.api_key = "rp-bench-" + uuid.uuid4().hex
        image = ensure_pod_image(self.docker).tag
        self.plane = RunPodServer(self.docker, image, api_key=self.api_key, host_network=True, pull_delay=1.0).start()
        self.key = ssh_key_pair(tmp)

    def close(self) -> None:
        self.plane.stop()
        self.s3.stop()

    def operator(self, name: str, **extra: str) -> tuple[Path, dict[str, str]]:
        self.plane.cleanup()
        project = self.tmp / name
        project.mkdir()
        env = {**self.s3.environ(self.bucket, prefix=f"{name}-{uuid.uuid4().hex[:6]}"),
               "RUNPOD_API_BASE_URL": self.plane.url, "RUNPOD_API_KEY": self.api_key, "RUNPOD_SSH_KEY": str(self.key),
               "SSH_KNOWN_HOSTS": str(project / "known_hosts"), "POD_GPU_TYPES": "NVIDIA L40S",
               "POD_VOLUME_GB": "20", "REMOTE_DIR": "/workspace/train", "TRAIN_COMMAND": TRAIN_COMMAND,
               "S3_SYNC_FLUSH_TIMEOUT": "30", "LOST_AFTER_SECONDS": "20", **extra}
        return project, env

    def left(self) -> str:
        containers = [c for c in self.docker.containers.list(all=True, filters={"label": LABEL})
                      if c.labels.get(LABEL) == self.plane._instance]  # noqa: SLF001 - this plane's only
        return f"pods left billing: {len(self.plane.pods)} in the API, {len(containers)} containers"

    def spend(self, env: dict[str, str], run_id: str) -> tuple[str, bool]:
        billed = self.plane.spend()
        state, ledger = recorded_spend(env, run_id)
        worst = max(abs(state - billed), abs(ledger - billed)) / billed if billed else 0.0
        return (f"billed ${billed:.4f}; recorded ${state:.4f} (watcher state), ${ledger:.4f} (run ledger): "
                f"within {worst * 100:.1f} %"), worst <= 0.05

    def nothing_left(self) -> bool:
        return not self.plane.pods and "0 containers" in self.left()


def _train(bench: Bench, project: Path, env: dict[str, str], name: str, *args: str) -> Train:
    return Train(project, env, bench.tmp / f"{name}.out", *args)


def limit_row(bench: Bench, report: Report, unreachable: bool) -> None:
    name = "unreachable" if unreachable else "limit"
    project, env = bench.operator(name, MAX_SPEND="0.02", LOST_AFTER_SECONDS="600", TRAIN_COMMAND=ENDLESS)
    train = _train(bench, project, env, name, "train", *FAST, "--results", str(project / "results"))
    try:
        run_id = train.run_id
        train.wait_for(r"\] deployed ")
        if unreachable:
            (pod,) = bench.plane.pods
            bench.plane.kill_sshd(pod)
        code = train.wait(600)
    finally:
        train.kill()
    (bill,) = bench.plane.bills()
    reached = bill.created_at + 0.02 / bill.cost_per_hr * 3600
    past = (bill.ended_at or time.time()) - reached
    spend, close = bench.spend(env, run_id)
    over = max(0.0, bill.dollars(time.time()) - 0.02)
    what = ("MAX_SPEND=$0.02 reached while the pod's sshd is dead (RUNNING in the API, SSH refused)" if unreachable
            else "MAX_SPEND=$0.02 reached while the pod answers (`fab train`, the demo training forever)")
    expected = ("the watcher stops the training (SIGTERM saves the step, unless SSH is dead), syncs, then terminates "
                "the pod whatever the guard says; 0 pods left; overspend = the stop and the terminate call")
    report.add(Row(what, expected, f"exit {code}; {bench.left()}; the pod terminated {past:.0f} s after the limit "
                   f"(${over:.4f} past MAX_SPEND at ${bill.cost_per_hr:.2f}/h); {spend}",
                   code == 0 and bench.nothing_left() and close))
    report.note(f"{name}: {train.output.strip().splitlines()[-1][:300]}")


def kill9_row(bench: Bench, report: Report) -> None:
    project, env = bench.operator("kill9", MAX_HOURS="0.03", TRAIN_COMMAND=ENDLESS)
    storage = storage_for(env)
    train = _train(bench, project, env, "kill9", "train", *FAST)
    try:
        run_id = train.run_id
        train.wait_for(r"\] deployed ")
        train.proc.send_signal(signal.SIGKILL)
        train.wait(30)
    finally:
        train.kill()
    state, _ = StateStore(storage, run_id, Secret(env["RUNPOD_API_KEY"])).load()
    deadline = state.pods[0].deadline or 0.0
    wait_until(lambda: not bench.plane.pods, timeout=600, what="the pod to end itself")
    (bill,) = bench.plane.bills()
    newest = latest_checkpoint(storage)
    hours_end = state.started_at + 0.03 * 3600
    again = _train(bench, project, env, "kill9-watch", "train.watch", run_id, *FAST)
    try:
        code = again.wait(300)
    finally:
        again.kill()
    spend, close = bench.spend(env, run_id)
    past = (bill.ended_at or 0) - hours_end
    report.add(Row("MAX_HOURS=0.03 (108 s); the watcher killed with kill -9 after the deploy; nothing else runs "
                   "on the operator's side",
                   "the pod stops its training with a checkpoint and terminates itself through RunPod's API with its "
                   "pod-scoped key, at its deadline plus 30 s of slack; `fab train.watch` then closes the run; 0 pods left",
                   f"ended {bill.ended_at - deadline:.0f} s after its deadline ({past:.0f} s, "
                   f"${max(0.0, past) / 3600 * bill.cost_per_hr:.4f}, past MAX_HOURS); newest in S3: {newest.name if newest else None}; "
                   f"train.watch exit {code}; {bench.left()}; {spend}",
                   bool(newest and newest.name.startswith("stop-")) and code == 0 and bench.nothing_left() and close))


def replace_row(bench: Bench, report: Report) -> None:
    project, env = bench.operator("replace")
    storage = storage_for(env)
    train = _train(bench, project, env, "replace", "train", *FAST, "--results", str(project / "results"))
    try:
        run_id = train.run_id
        wait_until(lambda: _step(storage) >= 20, timeout=420, what="step 20")
        (first,) = bench.plane.pods
        bench.plane.fail_terminate(first, times=2)
        bench.plane.drop_next_create()
        bench.plane.set_pull_delay(20)
        bench.plane.lose_pod(first, how="exited")
        train.wait_for(r"found under its name")
        train.interrupt(signal.SIGINT)
    finally:
        train.kill()
    detached = train.output[train.output.rfind("Watcher detached"):].strip()
    again = _train(bench, project, env, "replace-watch", "train.watch", run_id, *FAST, "--results",
                   str(project / "results"))
    try:
        code = again.wait(600)
    finally:
        again.kill()
    spend, close = bench.spend(env, run_id)
    made = len(bench.plane.bills())
    newest = latest_checkpoint(storage)
    report.add(Row("the pod reclaimed (EXITED) with its terminate failing twice, the replacement's create answer lost "
                   "(RunPod made the pod), Ctrl-C while the replacement boots, then `fab train.watch`",
                   "the lost create is found by its name (no third pod); the old pod's end retried until RunPod takes "
                   "it; the detach lists both pods; the run finishes; 0 pods left",
                   f"pods made {made}; detach listed {detached.count('$0.79/h')} billing pods; train.watch exit {code}; "
                   f"newest checkpoint step {newest.step if newest else None}; {bench.left()}; {spend}",
                   made == 2 and code == 0 and bench.nothing_left() and close))


def _step(storage) -> int:
    newest = latest_checkpoint(storage)
    return (newest.step or 0) if newest else 0


def zombie_row(bench: Bench, report: Report) -> None:
    project, env = bench.operator("zombie", LOST_AFTER_SECONDS="10")
    storage = storage_for(env)
    train = _train(bench, project, env, "zombie", "train", *FAST, "--results", str(project / "results"))
    try:
        run_id = train.run_id
        wait_until(lambda: _step(storage) >= 20, timeout=420, what="step 20")
        (first,) = bench.plane.pods
        bench.plane.fail_terminate(first, times=10_000)
        killed = time.monotonic()
        bench.plane.kill_sshd(first)
        lost = train.wait_for(rf"lost .*pod {first} does not answer over SSH for (\d+) s")
        detected = time.monotonic() - killed
        zombie = bench.plane.container(first)
        wait_until(lambda: b"superseded" in zombie.exec_run(["cat", "/workspace/train/train.log"]).output,
                   timeout=300, what="the zombie to be refused")
        bench.plane.fail_terminate(first, times=0)
        code = train.wait(600)
    finally:
        train.kill()
    lease = json.loads(storage.client.get_object(Bucket=storage.bucket,
                                                 Key=storage.key("runs", run_id, "lease.json"))["Body"].read())
    foreign = [c.name for c in list_checkpoints(storage) if c.uploaded and (storage.head(c.key).metadata or {})
               .get("attempt") not in (None, str(lease.get("claimed")))
               and c.uploaded.timestamp() > _claimed_at(lease)]
    spend, close = bench.spend(env, run_id)
    report.add(Row("sshd killed in a pod the API still calls RUNNING (LOST_AFTER_SECONDS=10), the old pod's terminate "
                   "failing until the replacement holds the run: it trains on, a zombie",
                   "replaced within LOST_AFTER_SECONDS of the first failed look; the zombie's writes refused once the "
                   "replacement claimed the run; the run finishes; 0 pods left",
                   f"replaced {detected:.0f} s after sshd died (the watcher counted {lost.group(1)} s); checkpoints "
                   f"written after the claim by another attempt: {len(foreign)}; exit {code}; {bench.left()}; {spend}",
                   not foreign and code == 0 and bench.nothing_left() and close))


def _claimed_at(lease: dict) -> float:
    from deploy.ledger.model import parse_time

    moment = parse_time(lease.get("claimed_at"))
    return moment.timestamp() if moment else 0.0


ROWS: dict[str, Callable[[Bench, Report], None]] = {
    "limit": lambda b, r: limit_row(b, r, unreachable=False),
    "unreachable": lambda b, r: limit_row(b, r, unreachable=True),
    "kill9": kill9_row,
    "replace": replace_row,
    "zombie": zombie_row,
}


def section(report: Report, header: dict[str, str]) -> str:
    lines = [START, "## Managed runs (`fab train`)", "",
             "Generated by `benchmarks/bench_managed.py` against the local RunPod control plane (pods are real "
             "containers) and moto's S3 server; what RunPod would bill is the plane's bill per pod, from the create "
             "it accepted to the terminate; the verdicts are the script's.", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", *table(report)]
    lines += ["", "Rerun: `.venv/bin/python -m benchmarks.bench_managed` (as root).", END]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Put the section in place of the last one (or before the hand-written notes, or at the end)."""
    kept = path.read_text() if path.exists() else ""
    if START in kept and END in kept:
        kept = kept[:kept.index(START)] + text + kept[kept.index(END) + len(END):]
    elif "## Reading the figures" in kept:
        at = kept.index("## Reading the figures")
        kept = kept[:at] + text + "\n\n" + kept[at:]
    else:
        kept = kept.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(kept)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ROWS))
    parser.add_argument("--out", default=str(REPO / "docs" / "reliability.md"))
    args = parser.parse_args()
    started, report, first = time.monotonic(), Report(), commit()
    report.loads.append(os.getloadavg()[0])
    with tempfile.TemporaryDirectory(prefix="bench-managed-") as tmp:
        bench = Bench(Path(tmp))
        try:
            for name in args.only.split(","):
                ROWS[name](bench, report)
        finally:
            bench.close()
    loads = [*report.loads, os.getloadavg()[0]]
    last = commit()
    header = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "commit": first if first == last else f"{first} at the start, {last} at the end",
              "load": f"1-minute load average {min(loads):.1f}-{max(loads):.1f} over the run",
              "duration": f"{(time.monotonic() - started) / 60:.1f} min",
              "training": f"the demo model on the CPU in the pod: `{TRAIN_COMMAND}` (max_steps=-1 for the limit rows)"}
    write_section(Path(args.out), section(report, header))
    print(f"\nwrote {args.out}: {sum(1 for r in report.rows if r.ok)} met, "
          f"{sum(1 for r in report.rows if r.ok is False)} not met")
    return 0 if all(r.ok is not False for r in report.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
