"""A warm reload after a code change: the training stops at a step as `fab stop` would, and the new code resumes
from exactly that step in a process that imported torch and Lightning meanwhile. Real processes, the real S3 server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

from deploy.training.reload import STATE_FILE  # noqa: E402
from tests.harness.servers import S3Server  # noqa: E402
from tests.harness.training_runs import (  # noqa: E402
    RECORDER,
    REPO,
    demo_fit,
    finish,
    output,
    recorded_steps,
    start,
    sync_env_for,
    wait_until,
)

pytestmark = pytest.mark.slow
BUCKET = "training-reload"
# The project's own module, imported by the training (a callback): its new text must be what runs after the reload.
PROJECT_MODULE = '''import lightning.pytorch as pl

VERSION = {version}


class Announce(pl.Callback):
    def on_train_start(self, trainer, module):
        print(f"code version {{VERSION}} from step {{trainer.global_step}}", flush=True)
'''


def reload(cwd: Path, *options: str) -> dict:
    answer = subprocess.run([sys.executable, "-m", "deploy.training.reload", *(options or ("--timeout", "120"))],
                            cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                            timeout=180)
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout.strip().splitlines()[-1])


def warm_children(cwd: Path) -> list[int]:
    """The entrypoint's children that were started as warm processes (they keep that command line as trainings)."""
    entrypoint = json.loads((cwd / STATE_FILE).read_text())["pid"]
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == entrypoint and b"deploy.training.warm" in cmdline:
            found.append(int(proc.name))
    return found


def test_a_reload_saves_the_step_and_the_new_code_resumes_there_warm(private_s3: S3Server, tmp_path: Path) -> None:
    # This test follows the process a deploy's connection starts ahead; none stands by on its own meanwhile
    # (test_training_warm covers the standby).
    env = {**sync_env_for(private_s3, BUCKET, checkpoint="s3"), "WARM_STANDBY": "off"}
    (tmp_path / ".gpu-deploy").mkdir()  # as under a deploy: the entrypoint keeps its state there
    (tmp_path / ".env").write_text("SOME_SETTING='1'\n")
    (tmp_path / "project_code.py").write_text(PROJECT_MODULE.format(version=1))
    command = demo_fit("--trainer.max_epochs=1000", f"--trainer.callbacks+={RECORDER}",
                       "--trainer.callbacks+=project_code.Announce", every=50)
    run = start(tmp_path, command, env)
    wait_until(lambda: len(recorded_steps(tmp_path)) >= 15, 120, "fifteen trained steps", run, tmp_path)
    assert "(warm: torch and Lightning imported ahead)" in output(tmp_path)  # the first start used a warm process

    (training,) = warm_children(tmp_path)  # the first start's warm process is the training now
    assert reload(tmp_path, "--prewarm") == {"prewarmed": True}  # a deploy connected: import ahead of its reload
    wait_until(lambda: len(warm_children(tmp_path)) == 2, 60, "a warm process started ahead", run, tmp_path)
    (ahead,) = set(warm_children(tmp_path)) - {training}
    (tmp_path / "project_code.py").write_text(PROJECT_MODULE.format(version=2000))  # what a code sync does
    answer = reload(tmp_path)
    assert answer["reloaded"] is True and answer["generation"] == 2, (answer, output(tmp_path)[-3000:])
    text = output(tmp_path)
    saved = [line for line in text.splitlines() if "gpu-deploy: saved step" in line]
    assert len(saved) == 1, text[-3000:]
    step = int(saved[0].split("saved step ")[1].split()[0])
    wait_until(lambda: f"code version 2000 from step {step}" in output(tmp_path), 120, "the new code at the saved step",
               run, tmp_path)
    wait_until(lambda: recorded_steps(tmp_path)[-1] >= step + 3, 120, "three steps of the new code", run, tmp_path)
    text = output(tmp_path)
    assert "entrypoint: reloading" in text and "read from this machine's copy (its sha256 matches)" in text, text[-3000:]
    assert "which the stop before this reload saved" in text, text[-3000:]  # one head, no listing of the bucket
    assert text.count("(warm: torch and Lightning imported ahead)") == 2, text[-3000:]
    steps = recorded_steps(tmp_path)
    assert steps.count(step) == 1 and steps[steps.index(step) + 1] == step + 1  # no step lost, none trained twice
    assert run.poll() is None  # the entrypoint itself never restarted
    assert warm_children(tmp_path) == [ahead]  # the new code trains in the process started ahead

    (tmp_path / ".env").write_text("SOME_SETTING='2'\n")  # a settings change: only a cold restart may apply it
    refused = reload(tmp_path)
    assert refused == {"reloaded": False, "signalled": False,
                       "why": "its settings, packages or gpu-deploy's own code changed since it started"}
    assert reload(tmp_path, "--prewarm") == {"prewarmed": False, "why": refused["why"]}
    run.send_signal(signal.SIGTERM)
    assert finish(run, 90, tmp_path) == 128 + signal.SIGTERM
    assert json.loads((tmp_path / STATE_FILE).read_text())["state"] == "ended"
