"""What people read from the ledger: status lines, hangs, log cleaning, the timeline, TensorBoard's source,
and what a record keeps (never a secret)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from deploy.errors import ConfigError
from deploy.flow.status import RunStatus
from deploy.ledger.board import choose_source
from deploy.ledger.identity import new_run_id, settings_digest, training_settings
from deploy.ledger.live import HANG_AFTER, clean_log_lines, heartbeat_of, progress_line
from deploy.ledger.model import Event, Heartbeat, Record
from deploy.ledger.show import describe_run, table_row, timeline
from deploy.ledger.store import RunData
from deploy.runtimes.base import ServiceState
from deploy.settings import load_settings

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=timezone.utc)


def beat(**fields) -> Heartbeat:
    return Heartbeat(at=T0, step=1200, max_steps=5000, epoch=3, steps_per_second=4.2, eta_seconds=900,
                     metrics={"train_loss": 0.3121}, **fields)


def test_progress_line_and_a_hang_only_while_the_process_lives() -> None:
    line, hang = progress_line(beat(), 5, running=True)
    assert line == "step 1200/5000, epoch 3, 4.2 steps/s, ETA 15 min, train_loss 0.3121 (5 s ago)" and not hang
    line, hang = progress_line(beat(), HANG_AFTER + 60, running=True)
    assert hang and "HANG? no heartbeat for 6 min while the process is alive" in line
    assert progress_line(beat(), HANG_AFTER + 60, running=False)[1] is False
    assert progress_line(None, None, running=True)[0].startswith("no heartbeat yet")


def test_a_heartbeat_s_age_is_by_the_host_s_clock_of_the_same_look() -> None:
    text = '{"at": "2026-11-30T06:00:00Z", "step": 1200}'
    found, age = heartbeat_of(text, T0.timestamp() + 90.5)
    assert found is not None and found.step == 1200 and age == 90.5
    assert heartbeat_of(text, None) == (None, None)  # no clock from the host: no age to tell
    assert heartbeat_of("", T0.timestamp()) == (None, None) and heartbeat_of("{not json", T0.timestamp()) == (None, None)
    assert heartbeat_of('{"step": 3}', T0.timestamp()) == (None, None)  # no time in it: not a heartbeat yet


def test_log_lines_lose_escapes_and_progress_bar_redraws() -> None:
    text = ("Epoch 3:  40%|████      | 4/10 [00:01<00:02, 3.1it/s]\r\x1b[A\n"
            "\x1b[A\rValidation DataLoader 0: 100%|██████████| 2/2 [00:00<00:00, 50.0it/s]\n"
            "\x1b[32mentrypoint: resuming from last.ckpt (step 120)\x1b[0m\n"
            "Epoch 3: 100%|██████████| 10/10 [00:02<00:00]\rTrainer.fit stopped: max_epochs=4 reached.\n")
    assert clean_log_lines(text) == ["entrypoint: resuming from last.ckpt (step 120)",
                                     "Trainer.fit stopped: max_epochs=4 reached."]


def test_status_never_says_up_question_mark_for_an_exited_service() -> None:
    exited = RunStatus(host="gpu-a", service=ServiceState(exists=True, running=False, status="exited (1)", restarts=2),
                       uptime_seconds=None, gpus=(), log_tail="", run="r1: failed (exit 1), 3 h since the first deploy")
    lines = exited.describe()
    assert "service     exited (1), 2 restarts" in lines and not any("up ?" in line for line in lines)
    assert "run         r1: failed (exit 1), 3 h since the first deploy" in lines
    running = RunStatus(host="gpu-a", service=ServiceState(exists=True, running=True, status="running"),
                        uptime_seconds=90, gpus=(), log_tail="", progress="step 5 (1 s ago)")
    assert "service     running, up 90 s, 0 restarts" in running.describe()
    assert "progress    step 5 (1 s ago)" in running.describe()


def test_timeline_and_show_text() -> None:
    events = (Event.make("deployed", writer="deploy-laptop", host="root@gpu-a:22", at=T0, gpu="NVIDIA L40S", gpus=1,
                         price_per_hour=1.2),
              Event.make("exited", writer="train-gpu-a", host="root@gpu-a:22", at=T0 + timedelta(hours=2), code=1),
              Event.make("stopped", writer="deploy-laptop", host="root@gpu-a:22", at=T0 + timedelta(hours=3)))
    run = RunData(Record(run_id="r1", created=T0, command="fab deploy-runpod", image="piper:1", commit="abc123",
                         dirty=True, settings_digest="sha256:x", settings={"MAX_EPOCHS": "10"}), events=events)
    lines = timeline(run)
    assert lines[0].startswith("  2026-11-30 06:00:00  +0 s         deployed    root@gpu-a:22")
    assert "gpu=NVIDIA L40S gpus=1 $1.20/h  (deploy-laptop)" in lines[0]
    assert "+2 h 00 min" in lines[1] and "code=1" in lines[1]
    text = "\n".join(describe_run(run, moment=T0 + timedelta(hours=4)))
    assert "cost        $3.60 over 3.00 host-hours" in text and "git abc123 (dirty)" in text
    assert "MAX_EPOCHS=10" in text and "checkpoints  none found for this run" in text


def test_table_row_from_a_summary() -> None:
    row = table_row({"run_id": "r1", "created": "2026-11-30T06:00:00.000000Z", "state": "running",
                     "hosts": [{"host": "a", "gpu": "NVIDIA L40S", "gpus": 2}], "restarts": 1, "step": 1200,
                     "hours": 1.5, "cost": "$1.80"})
    assert row == ("r1", "2026-11-30 06:00", "running", "1", "2x NVIDIA L40S", "1", "1200", "1.50", "$1.80")


def test_tensorboard_source_choice_says_why() -> None:
    assert choose_source("auto", False, lambda: True).source == "s3"
    assert choose_source("auto", True, lambda: True).source == "ssh"
    assert "no TensorBoard" in choose_source("auto", True, lambda: False).why

    def unreachable() -> bool:
        raise OSError("refused")

    assert "not reachable" in choose_source("auto", True, unreachable).why
    with pytest.raises(ConfigError, match="--via must be one of auto, s3, ssh"):
        choose_source("tunnel", True, lambda: True)


def test_the_record_keeps_training_settings_and_never_a_secret() -> None:
    settings = load_settings(environ={"AWS_SECRET_ACCESS_KEY": "very-secret", "MAX_EPOCHS": "7", "RUN_ID": "r1",
                                      "TRAIN_COMMAND": "python train.py", "ENABLE_S3_SYNC": "0"})
    shown = training_settings(settings)
    assert shown["MAX_EPOCHS"] == "7" and shown["TRAIN_COMMAND"] == "python train.py"
    assert "very-secret" not in repr(shown) and "RUN_ID" not in shown and "ENABLE_S3_SYNC" not in shown
    assert settings_digest(shown) == settings_digest(dict(reversed(list(shown.items()))))
    assert settings_digest(shown) != settings_digest({**shown, "MAX_EPOCHS": "8"})
    assert len(new_run_id()) == len("20261130-060215-a1b2")


def test_the_tunnel_command_starts_tensorboard_on_the_host() -> None:
    from deploy.ledger.board import tunnel_command

    cmd = tunnel_command(["ssh", "-p", "2222"], "root@gpu-a", "/workspace/my run", 6007)
    assert cmd[:6] == ["ssh", "-p", "2222", "-tt", "-L", "127.0.0.1:6007:127.0.0.1:6006"]
    assert cmd[-2] == "root@gpu-a"
    assert cmd[-1] == ("cd '/workspace/my run' && PATH=\"$PWD/.venv/bin:$PATH\" exec tensorboard "
                       "--logdir lightning_logs --host 127.0.0.1 --port 6006")


def test_the_record_names_the_training_projects_commit_and_whether_it_was_dirty(tmp_path) -> None:
    import subprocess

    from deploy.ledger.identity import git_source

    assert git_source(str(tmp_path)) == ("", None)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "train.py").write_text("print(1)\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    commit, dirty = git_source(str(tmp_path))
    assert len(commit) == 40 and dirty is False
    (tmp_path / "train.py").write_text("print(2)\n")
    assert git_source(str(tmp_path)) == (commit, True)
