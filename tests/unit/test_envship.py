"""Which keys go to the host's .env."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.hosts.envfile import plan_env
from deploy.errors import ConfigError
from deploy.settings import load_settings

SECRET = "s3cr3t-value-never-shown-0123456789"


def settings_with(tmp_path: Path, text: str, **environ: str):
    env_file = tmp_path / ".env"
    env_file.write_text(text)
    return load_settings(env_file=env_file, environ=environ), environ


def test_training_keys_go_and_operator_keys_stay(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, (
        f"AWS_ACCESS_KEY_ID=AKID\nAWS_SECRET_ACCESS_KEY={SECRET}\nS3_BUCKET=my-bucket\n"
        "RUNPOD_HOST=203.0.113.10\nRUNPOD_API_KEY=rp-secret\nRUNPOD_SSH_KEY=~/.ssh/id\n"
        "REMOTE_DIR=/workspace/x\nWANDB_API_KEY=wandb\nBATCH_SIZE=8\nSSH_STRICT_HOST_KEYS=1\n"))
    shipment = plan_env(settings, extra={"IMAGE": "train:abc"}, environ=environ)
    assert "AWS_SECRET_ACCESS_KEY" in shipment.keys and "WANDB_API_KEY" in shipment.keys
    assert {"BATCH_SIZE", "S3_BUCKET", "IMAGE"} <= set(shipment.keys)
    for key in ("RUNPOD_HOST", "RUNPOD_API_KEY", "RUNPOD_SSH_KEY", "REMOTE_DIR", "SSH_STRICT_HOST_KEYS",
                "SHIP_ENV_INCLUDE"):
        assert key not in shipment.keys
    text = shipment.content().decode()
    assert f"AWS_SECRET_ACCESS_KEY={SECRET}\n" in text and "IMAGE=train:abc\n" in text
    assert SECRET not in repr(shipment)


def test_lists_are_configurable(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, "S3_BUCKET=my-bucket\nWANDB_API_KEY=w\nHF_TOKEN=h\n"
                                      "SHIP_ENV_EXCLUDE=HF_*\n")
    keys = plan_env(settings, environ=environ).keys
    assert "WANDB_API_KEY" in keys and "HF_TOKEN" not in keys
    settings, environ = settings_with(tmp_path, "S3_BUCKET=my-bucket\nWANDB_API_KEY=w\nSHIP_ENV_INCLUDE=S3_*,AWS_*\n")
    keys = plan_env(settings, environ=environ).keys
    assert "S3_BUCKET" in keys and "WANDB_API_KEY" not in keys
    assert all(k.startswith(("S3_", "AWS_")) for k in keys)


def test_process_environment_wins_for_unknown_keys(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, "WANDB_API_KEY=from-file\n", WANDB_API_KEY="from-env")
    assert b"WANDB_API_KEY=from-env\n" in plan_env(settings, environ=environ).content()


def test_a_value_with_a_line_break_is_refused(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, 'TOKEN="a\nb"\n')
    with pytest.raises(ConfigError, match="TOKEN has a line break"):
        plan_env(settings, environ=environ)
