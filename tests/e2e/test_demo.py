"""The README's first command: the whole loop on this machine with nothing configured."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness.fab import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_demo_runs_the_loop_end_to_end(tmp_path: Path, docker_client, base_image: str) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run([str(REPO / "scripts/demo"), f"--workdir={workdir}", "--epochs=2"], capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for command in ("$ fab image-to-s3", "$ fab deploy-runpod", "$ fab sync-from-runpod --path=lightning_logs"):
        assert command in out
    assert "last.ckpt" in out and "latest: " in out  # fab s3.checkpoints listed them in the embedded bucket
    assert list((workdir / "lightning_logs").rglob("events.out.tfevents.*"))
    assert list((workdir / "lightning_logs").rglob("*.ckpt"))
    assert "tensorboard --logdir" in out
    assert "stopped the embedded S3 server and sshd" in out
    leftover = docker_client.containers.list(all=True, filters={"label": "com.docker.compose.project=gpu-deploy-demo-train"})
    assert leftover == []
