"""A bad .env through the real `fab` command line: one sentence naming the file, exit 1, no traceback."""

from __future__ import annotations

from pathlib import Path

from tests.harness.fab import run_fab


def test_a_dotenv_that_is_not_utf8_is_one_sentence_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"S3_BUCKET=my-bucket\nWANDB_API_KEY=caf\xe9\n")
    out = run_fab("config", cwd=tmp_path, env={"ENV_FILE": ""}, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout
    assert out.stderr.strip().splitlines()[-1] == (
        "Error: The .env file .env is not UTF-8 text (byte 0xe9 at offset 37); save it as UTF-8.")


def test_an_env_file_flag_naming_a_folder_is_one_sentence_and_exit_1(tmp_path: Path) -> None:
    out = run_fab("config", f"--env-file={tmp_path}", cwd=tmp_path, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout
    assert f"The .env file {tmp_path} is not a file; fix the --env-file flag or ENV_FILE." in out.stderr
