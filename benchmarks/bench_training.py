"""Training speed with S3 checkpoint sync on vs off: the demo model, a checkpoint every few steps.

    .venv/bin/python -m benchmarks.bench_training [--steps 3000] [--every 10] [--phase 100] [--hidden 4096]
                                                  [--in-thread] [--threads N]

Starts its own moto S3 server and trains the demo model on the CPU in one run, with a checkpoint
every ``--every`` steps. The run alternates phases of ``--phase`` steps with S3CheckpointSync
uploading ("on") and not uploading ("off"); checkpoints are written in both. Alternating inside
one run means that load from other processes on a shared machine, and the warm-up, hit both sides
alike, which separate runs on a busy 2-core machine do not. It prints the median steps per second
and CPU time per step (all threads of the process) of each side, the slowdown, and whether every
checkpoint of the "on" phases reached the bucket.

moto stands in for a remote S3 service, so it runs at the lowest CPU priority: on a 2-core machine
its request handling would otherwise be counted as training time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.training.callbacks import S3CheckpointSync
from deploy.training.demo import DemoData, DemoModel
from tests.harness.servers import S3Server


class Phases(Callback):
    """Times phases of ``phase`` steps and switches the sync on for odd phases, off for even ones."""

    def __init__(self, phase: int) -> None:
        self.phase = phase
        self.started: float | None = None
        self.cpu_started = 0.0
        self.times: dict[str, list[float]] = {"off": [], "on": []}
        self.cpu: dict[str, list[float]] = {"off": [], "on": []}

    def side(self, step: int) -> str:
        return "on" if (step // self.phase) % 2 else "off"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.phase == 0:
            now, cpu = time.perf_counter(), time.process_time()
            if self.started is not None and step > self.phase:  # phase 0 is the warm-up
                self.times[self.side(step - 1)].append(now - self.started)
                self.cpu[self.side(step - 1)].append(cpu - self.cpu_started)
            self.started, self.cpu_started = now, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=10, help="checkpoint every this many steps")
    parser.add_argument("--phase", type=int, default=100, help="steps per on/off phase")
    parser.add_argument("--hidden", type=int, default=4096, help="model width (sets the checkpoint size)")
    parser.add_argument("--in-thread", action="store_true", help="upload on a thread, not the helper process")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice, every core)")
    args = parser.parse_args()
    if args.phase % args.every:
        parser.error("--phase must be a multiple of --every")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        server = S3Server(Path(tmp) / "moto").start()
        os.setpriority(os.PRIO_PROCESS, server.proc.pid, 19)
        try:
            bucket = "bench-training"
            server.client().create_bucket(Bucket=bucket)
            os.environ.update(server.environ(bucket, prefix="bench"))  # as in the container: from settings
            storage = Storage.from_settings(load_settings())
            phases = Phases(args.phase)
            # Built from settings, the callback uploads through its helper process; handed a Storage,
            # it uploads on its own thread (--in-thread), for comparison.
            sync = S3CheckpointSync(enabled=True, storage=storage if args.in_thread else None)
            saved = sync._saved
            sent: list[str] = []

            def saved_when_on(path: str, checkpoint: dict) -> None:
                # The step of a checkpoint saved after step N's batch is N + 1.
                if phases.side(int(checkpoint["global_step"]) - 1) == "on":
                    sent.append(os.path.basename(path))
                    saved(path, checkpoint)

            sync._saved = saved_when_on  # the benchmark's switch; checkpoints are written either way
            root = Path(tmp) / "run"
            trainer = Trainer(default_root_dir=root, max_steps=args.steps, accelerator="cpu", logger=False,
                              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                              limit_val_batches=0, callbacks=[
                                  ModelCheckpoint(dirpath=root, every_n_train_steps=args.every, save_top_k=-1,
                                                  monitor=None), phases, sync])
            trainer.fit(DemoModel(features=64, hidden=args.hidden),
                        DemoData(batch_size=64, samples=4096, features=64))

            stored = {o.name for o in storage.list(storage.key("checkpoints") + "/", with_metadata=True)}
            ckpt = next(root.glob("*.ckpt"))
            rate = {side: statistics.median(args.phase / t for t in times) for side, times in phases.times.items()}
            print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
                  f"{args.steps} steps, a checkpoint every {args.every} steps ({ckpt.stat().st_size / 1e6:.1f} MB), "
                  f"phases of {args.phase} steps: {len(phases.times['off'])} off, {len(phases.times['on'])} on; "
                  f"uploads {'on a thread' if args.in_thread else 'in the helper process'}")
            cpu = {side: statistics.median(t / args.phase * 1000 for t in times) for side, times in phases.cpu.items()}
            for side in ("off", "on"):
                print(f"sync {side:3}: median {rate[side]:6.1f} steps/s, {cpu[side]:.2f} ms CPU per step (all threads)")
            print(f"slowdown: {100 * (1 - rate['on'] / rate['off']):+.1f} % in steps/s; "
                  f"{100 * (cpu['on'] / cpu['off'] - 1):+.1f} % in CPU time per step")
            flush = sync.last_flush
            assert flush is not None
            print(f"uploaded {len(stored)} of {len(sent)} checkpoints of the 'on' phases "
                  f"(all: {set(sent) == stored}); final flush {flush.seconds:.2f} s")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
