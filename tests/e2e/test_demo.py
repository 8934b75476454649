"""The README's first command: the whole loop on this machine with nothing configured, and what it shows a user."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.harness.fab import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# What a progress bar leaves in a log when it is shown raw: tqdm's counters, redraws and escapes.
BAR_DEBRIS = re.compile(r"\d+%\||\|\s*\d+/(\d+|\?)\s*\[|it/s\]|\r|\x1b")


def section(out: str, command: str) -> str:
    """What one `$ fab ...` line printed: up to the next command or `==>` headline."""
    start = out.index(f"$ fab {command}\n") + len(f"$ fab {command}\n")
    ends = [i for i in (out.find("\n$ fab ", start), out.find("\n==> ", start)) if i != -1]
    return out[start:min(ends) if ends else len(out)]


def test_demo_runs_the_loop_end_to_end(tmp_path: Path, docker_client, base_image: str) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run([str(REPO / "scripts/demo"), f"--workdir={workdir}", "--epochs=2"], capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    # The commands a user runs for real, in the order the README's quick start has them.
    shown = re.findall(r"^\$ fab (\S+)", proc.stdout, flags=re.M)
    assert shown == ["image-build", "deploy-runpod", "status", "sync-from-runpod", "s3.checkpoints", "runs"], shown
    assert "$ fab image-build --push" in out and "image-to-s3" not in out

    # The demo's training project holds no code: the servers' keys and logs never travel to the host.
    deploy = section(out, "deploy-runpod")
    assert f"from {workdir}/project " in deploy, deploy
    host = workdir / "host" / "demo-train"
    assert not (host / "sshd").exists() and not (host / "moto").exists(), sorted(p.name for p in host.iterdir())

    # fab status after the run: clean last log lines, no progress-bar debris.
    status = section(out, "status")
    log_lines = status.split("last log lines:\n", 1)[1].splitlines()
    assert any("max_epochs=2" in line for line in log_lines), status
    assert [line for line in log_lines if BAR_DEBRIS.search(line)] == [], status

    # fab s3.checkpoints: every step came from the upload metadata, so no footnote about `*` rows.
    listing = section(out, "s3.checkpoints")
    assert "last.ckpt" in listing and "3 checkpoints; latest: last.ckpt." in listing, listing
    assert "*" not in listing, listing

    # fab runs: the run the deploy made, finished, with a cost at the demo's made-up price.
    run_id = re.search(r"^run\s+(\d{8}-\d{6}-[0-9a-f]{4}) ", deploy, flags=re.M).group(1)
    runs = section(out, "runs")
    row = next(line for line in runs.splitlines() if line.startswith(run_id))
    assert "finished" in row and re.search(r"\$\d+\.\d\d$", row.strip()) and not row.strip().endswith("$0.00"), runs

    # The next steps name today's commands.
    done = out[out.index("==> Done"):]
    assert run_id in done and "fab image-build --push" in done and "fab deploy-runpod" in done, done
    assert "tensorboard --logdir" in done
    assert "stopped the embedded S3 server and sshd" in done

    assert list((workdir / "lightning_logs").rglob("events.out.tfevents.*"))
    assert list((workdir / "lightning_logs").rglob("*.ckpt"))
    leftover = docker_client.containers.list(all=True, filters={"label": "com.docker.compose.project=gpu-deploy-demo-train"})
    assert leftover == []
