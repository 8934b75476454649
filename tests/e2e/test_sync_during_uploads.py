"""`fab sync-from-runpod --path=lightning_logs` while training runs and large checkpoints upload.

The README's loop runs this command mid-training. The training (native runtime on the loopback "pod")
writes checkpoints of about 200 MB and keeps only the newest (Lightning deletes the one before), while the
uploader stages each finished file under ``checkpoints/.s3-sync/`` and sends it: files appear and vanish
during every sync. Three syncs, each started while an upload is in flight, must each exit 0, copy no
staging or journal file, and bring the checkpoints that stayed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploy.training.journal import STAGING_DIR
from tests.harness.fab import run_fab
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.slow]

HIDDEN = 3_000_000  # 16 x 3M + 3M + 3M + 1 parameters: about 216 MB of float32 per checkpoint
BIG_TRAIN = ("python -m deploy.training.demo fit --trainer.max_steps=100000 --trainer.max_epochs=1000 "
             "--trainer.enable_progress_bar=false --trainer.enable_model_summary=false "
             f"--checkpoint.every_n_train_steps=3 --checkpoint.save_top_k=1 --checkpoint.monitor=null "
             f"--model.hidden={HIDDEN} --data.samples=256")


def staged(remote_dir: str) -> list[Path]:
    """Files the uploader has staged and not yet sent (an upload in flight)."""
    return [p for p in Path(remote_dir, "lightning_logs").rglob(f"{STAGING_DIR}/*") if p.is_file()]


def test_sync_from_runpod_three_times_while_large_checkpoints_upload(native_workspace, tmp_path: Path) -> None:
    project, remote_dir, values = native_workspace
    with open(project / ".env", "a") as env:
        env.write(f"TRAIN_COMMAND='{BIG_TRAIN}'\n")
    deployed = run_fab("deploy-runpod", cwd=project)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    dest = tmp_path / "results"
    for attempt in range(3):
        wait_until(lambda: staged(remote_dir), timeout=300, what=f"an upload in flight (sync {attempt + 1})")
        result = run_fab("sync-from-runpod", "--path=lightning_logs", f"--dest={dest}", cwd=project)
        assert result.returncode == 0, f"sync {attempt + 1}:\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        copied = [p for p in dest.rglob("*") if STAGING_DIR in p.parts or p.name.startswith(f"{STAGING_DIR}-")]
        assert copied == [], f"staging files were copied: {copied}"
    ckpts = [p for p in dest.rglob("*.ckpt")]
    assert ckpts and all(p.stat().st_size > 150e6 for p in ckpts), ckpts
    stopped = run_fab("stop", "--timeout=60", cwd=project)
    assert stopped.returncode == 0, stopped.stderr
    os.sync()
