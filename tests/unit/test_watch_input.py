"""Bad input to fab train and fab train.watch: one sentence naming what to fix, exit 1, before any pod or bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.fab import run_fab


def fab(tmp_path: Path, *args: str, **env: str):
    return run_fab(*args, env={"ENV_FILE": "", **env}, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("args, env, expected", [
    (("train", "--api-every", "soon"), {},
     "Error: --api-every must be a duration such as 90s, 15m, 2h or 3d (a bare number is seconds), got 'soon'.\n"),
    (("train", "--timeout", "0"), {}, "Error: --timeout must be at least 1 s, got '0'.\n"),
    (("train.watch", "../other"), {}, "Error: '../other' is not a run id (letters, digits, '.', '_' and '-', up to "
                                      "128); `fab runs` lists them.\n"),
    (("train.watch", "--run", ""), {}, "Error: Name the run to watch: fab train.watch RUN (fab runs lists them).\n"),
])
def test_bad_flags_are_one_sentence(tmp_path: Path, args, env, expected) -> None:
    result = fab(tmp_path, *args, **env)
    assert (result.returncode, result.stderr) == (1, expected)


@pytest.mark.parametrize("key, value", [("MAX_SPEND", "lots"), ("MAX_HOURS", "-1"), ("ON_SUCCESS", "explode"),
                                        ("MAX_RESTARTS", "many"), ("LOST_AFTER_SECONDS", "1")])
def test_bad_guardrail_settings_name_the_key(tmp_path: Path, key: str, value: str) -> None:
    result = fab(tmp_path, "train", "--dry-run", **{key: value})
    assert result.returncode == 1 and key in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_watch_needs_the_bucket_and_the_api_key(tmp_path: Path) -> None:
    result = fab(tmp_path, "train.watch", "20261130-060215-a1b2", AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="",
                 S3_BUCKET="", RUNPOD_API_KEY="")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: Missing settings: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_BUCKET, "
                                    "RUNPOD_API_KEY")
