"""Helpers for the training tests that run the entrypoint and the demo as real processes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lightning.pytorch import Callback

from deploy.dev import waiting
from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.storage.checkpoints import CheckpointInfo, list_checkpoints

REPO = Path(__file__).resolve().parents[2]
RECORDER = "tests.harness.training_runs.StepRecorder"


class StepRecorder(Callback):
    """Appends ``global_step`` after every training batch to ``path`` (in the run's working directory),
    so a test knows the last step a process trained. Attach with ``--trainer.callbacks+=`` + RECORDER."""

    def __init__(self, path: str = "steps.log") -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{trainer.global_step}\n")


def recorded_steps(cwd: Path, name: str = "steps.log") -> list[int]:
    path = cwd / name
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def demo_fit(*extra: str, step_delay: float = 0.02, every: int = 10) -> list[str]:
    """The demo's LightningCLI ``fit`` with a checkpoint every ``every`` steps, all kept."""
    return [sys.executable, "-m", "deploy.training.demo", "fit",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.accelerator=cpu", f"--model.step_delay={step_delay}",
            "--data.batch_size=32", "--data.samples=512",
            f"--checkpoint.every_n_train_steps={every}", "--checkpoint.save_top_k=-1",
            "--checkpoint.monitor=null", "--checkpoint.save_last=false", *extra]


def start(cwd: Path, command: Sequence[str], env: Mapping[str, str], log_name: str = "run.log",
          entrypoint: bool = True) -> subprocess.Popen:
    """Start ``command`` (behind the training entrypoint) in its own process group; output to a log."""
    cwd.mkdir(parents=True, exist_ok=True)
    full = [sys.executable, "-m", "deploy.training.entrypoint", "--", *command] if entrypoint else list(command)
    environ = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env}
    with (cwd / log_name).open("ab") as out:
        return subprocess.Popen(full, cwd=cwd, env=environ, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def output(cwd: Path, log_name: str = "run.log") -> str:
    path = cwd / log_name
    return path.read_text(errors="replace") if path.exists() else ""


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               proc: subprocess.Popen | None = None, cwd: Path | None = None) -> object:
    """The one poll (:mod:`deploy.dev.waiting`), failing with the end of the run's log in ``cwd``."""
    return waiting.wait_until(predicate, timeout, what, proc=proc, log=cwd / "run.log" if cwd else None)


def finish(proc: subprocess.Popen, timeout: float, cwd: Path) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"the run did not finish within {timeout:.0f} s:\n{output(cwd)[-3000:]}") from None


def storage_for(env: Mapping[str, str] | None = None) -> Storage:
    return Storage.from_settings(load_settings(environ={**os.environ, **(env or {})}))


def uploaded(storage: Storage) -> list[CheckpointInfo]:
    return list_checkpoints(storage)


def local_checkpoints(root: Path) -> dict[str, Path]:
    return {p.name: p for p in root.rglob("*.ckpt") if ".resume" not in p.parts and ".s3-sync" not in p.parts}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def object_sha256(storage: Storage, key: str) -> str:
    body = storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


def private_s3_server(folder: Path, bucket: str):
    """A moto server of one test's own, so it can be frozen (SIGSTOP) or stopped without touching others.

    A generator for a pytest fixture: ``yield from private_s3_server(tmp_path / "moto", BUCKET)``.
    """
    from tests.harness.servers import S3Server

    server = S3Server(folder).start()
    server.client().create_bucket(Bucket=bucket)
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def sync_env_for(server, bucket: str, checkpoint: str) -> dict[str, str]:
    """Training settings with S3 sync on against ``server``: one try per call, 30 s to flush."""
    return {**server.environ(bucket, prefix="run"), "ENABLE_S3_SYNC": "1", "CHECKPOINT": checkpoint,
            "AWS_MAX_ATTEMPTS": "1", "S3_SYNC_FLUSH_TIMEOUT": "30"}
