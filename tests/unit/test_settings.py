"""Settings: precedence, missing keys, malformed values, masking."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from deploy.errors import ConfigError
from deploy.settings import (
    SETTING_KEYS,
    Secret,
    env_example,
    load_settings,
    parse_bucket,
    read_env_file,
)

SECRET = "secret-" + uuid.uuid4().hex  # made per run: no key-shaped value in the repository
ACCESS_ID = "access-" + uuid.uuid4().hex[:8]


def write_env(path: Path, **values: str) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def test_precedence_is_flag_then_environment_then_dotenv_then_default(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", S3_BUCKET="from-dotenv", S3_PREFIX="dotenv-prefix",
                         RUNPOD_PORT="2200", RUNPOD_USER="dotenv-user")
    environ = {"S3_BUCKET": "from-environ", "RUNPOD_PORT": "2222"}
    settings = load_settings(overrides={"S3_BUCKET": "from-flag", "RUNPOD_USER": None},
                             env_file=env_file, environ=environ)

    assert (settings.s3_bucket, settings.source("S3_BUCKET")) == ("from-flag", "flag")
    assert (settings.runpod_port, settings.source("RUNPOD_PORT")) == (2222, "environment")
    assert (settings.runpod_user, settings.source("RUNPOD_USER")) == ("dotenv-user", str(env_file))
    assert (settings.s3_prefix, settings.source("S3_PREFIX")) == ("dotenv-prefix", str(env_file))
    assert (settings.aws_default_region, settings.source("AWS_DEFAULT_REGION")) == ("us-east-1", "default")
    assert settings.remote_dir.startswith("/workspace/")


def test_env_file_path_comes_from_flag_or_environment(tmp_path: Path) -> None:
    by_env = write_env(tmp_path / "a.env", S3_BUCKET="bucket-a")
    by_flag = write_env(tmp_path / "b.env", S3_BUCKET="bucket-b")
    assert load_settings(environ={"ENV_FILE": str(by_env)}).s3_bucket == "bucket-a"
    assert load_settings(env_file=by_flag, environ={"ENV_FILE": str(by_env)}).s3_bucket == "bucket-b"


def test_default_env_file_is_read_from_the_working_directory(tmp_path: Path) -> None:
    write_env(tmp_path / ".env", S3_BUCKET="cwd-bucket")  # the autouse fixture chdirs to tmp_path
    settings = load_settings(environ={})
    assert settings.s3_bucket == "cwd-bucket" and settings.env_file_found


def test_a_named_env_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.env does not exist"):
        load_settings(env_file=tmp_path / "missing.env", environ={})


def test_a_named_env_file_that_is_a_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^The .env file {tmp_path} is not a file; fix the --env-file flag"):
        load_settings(env_file=tmp_path, environ={})


@pytest.mark.parametrize("named", [True, False])
def test_an_env_file_that_is_not_utf8_is_one_sentence_naming_it(tmp_path: Path, named: bool) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"S3_BUCKET=b\nWANDB_API_KEY=\xff\xfe latin-1 \xe9\n")
    with pytest.raises(ConfigError, match=r"^The .env file \S*\.env is not UTF-8 text \(byte 0xff at offset 26\); "
                                          r"save it as UTF-8\.$"):
        load_settings(env_file=env_file if named else None, environ={})


def test_an_env_file_that_cannot_be_read_is_one_sentence_naming_it(tmp_path: Path, monkeypatch) -> None:
    # As root, mode 000 still reads: make the open fail as it does for another user.
    def refuse(path, **_kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    env_file = write_env(tmp_path / "prod.env", S3_BUCKET="b")
    monkeypatch.setattr("deploy.settings.dotenv_values", refuse)
    with pytest.raises(ConfigError, match=r"prod.env cannot be read \(Permission denied\); check its permissions"):
        load_settings(env_file=env_file, environ={})


def test_require_names_every_missing_key_and_the_env_file_at_once(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", S3_BUCKET="some-bucket")
    settings = load_settings(env_file=env_file, environ={})
    with pytest.raises(ConfigError) as err:
        settings.require("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET", "RUNPOD_HOST")
    message = str(err.value)
    assert "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, RUNPOD_HOST" in message
    assert "S3_BUCKET" not in message
    assert str(env_file) in message


def test_require_without_an_env_file_says_where_it_looked() -> None:
    with pytest.raises(ConfigError, match=r"no \.env file at \.env"):
        load_settings(environ={}).require("S3_BUCKET")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("RUNPOD_PORT", "twenty-two", "RUNPOD_PORT from environment must be a whole number"),
        ("RUNPOD_PORT", "70000", "RUNPOD_PORT from environment must be from 1 to 65535"),
        ("PRECISION", "half", "PRECISION from environment must be one of"),
        ("S3_BUCKET", "My_Bucket", "'My_Bucket' is not a valid bucket name"),
        ("AWS_ENDPOINT_URL", "s3.timeweb.cloud", "must be an http:// or https:// URL"),
        ("ENABLE_S3_SYNC", "maybe", "must be 1 or 0"),
        ("AWS_RETRY_MODE", "sometimes", "AWS_RETRY_MODE from environment must be one of"),
        ("REMOTE_DIR", "workspace", "must be an absolute path"),
        ("REMOTE_DIR", "/workspace/../etc", "REMOTE_DIR from environment must be an absolute path without '..'"),
        ("REMOTE_DIR", "/srv/run\nx", "REMOTE_DIR from environment holds a control character"),
        ("REMOTE_DIR", "/srv/..", "without '..'"),
        ("S3_PREFIX", "a/../b", "must not contain"),
    ],
)
def test_malformed_values_name_the_key_and_the_value(key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="Invalid settings") as err:
        load_settings(environ={key: value})
    assert fragment in str(err.value)


def test_every_malformed_value_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"RUNPOD_PORT": "x", "PRECISION": "half"})
    assert "RUNPOD_PORT" in str(err.value) and "PRECISION" in str(err.value)


@pytest.mark.parametrize("name", ["ab", "-bucket", "bucket-", "a" * 64, "192.168.1.1", "my..bucket", "UPPER"])
def test_bucket_names_s3_would_reject_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        parse_bucket(name)


@pytest.mark.parametrize("name", ["abc", "my-training-bucket", "a1b2c3-piper.ckpts", "0" * 63])
def test_valid_bucket_names_pass(name: str) -> None:
    assert parse_bucket(name) == name


def test_typed_values() -> None:
    settings = load_settings(environ={
        "ENABLE_S3_SYNC": "true", "BATCH_SIZE": "16", "PRECISION": "bf16-mixed",
        "AWS_ENDPOINT_URL": "https://s3.timeweb.cloud/", "S3_PREFIX": "/piper/run1/",
        "REMOTE_DIR": "/workspace/piper/",
    })
    assert settings.enable_s3_sync is True
    assert settings.batch_size == 16
    assert settings.precision == "bf16-mixed"
    assert settings.aws_endpoint_url == "https://s3.timeweb.cloud"
    assert settings.s3_prefix == "piper/run1"
    assert settings.remote_dir == "/workspace/piper"


def test_empty_value_means_unset_and_stops_lower_layers(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", CHECKPOINT="s3", BATCH_SIZE="8")
    settings = load_settings(env_file=env_file, environ={"CHECKPOINT": "", "BATCH_SIZE": ""})
    assert settings.checkpoint == ""
    assert settings.batch_size is None


def test_secrets_never_show_their_value(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", AWS_SECRET_ACCESS_KEY=SECRET, AWS_ACCESS_KEY_ID=ACCESS_ID)
    settings = load_settings(env_file=env_file, environ={})
    shown = " ".join([repr(settings), str(settings), f"{settings.aws_secret_access_key}",
                      repr(settings.aws_secret_access_key), str(settings.describe())])
    assert SECRET not in shown and ACCESS_ID not in shown
    assert settings.aws_secret_access_key.reveal() == SECRET
    assert dict((k, v) for k, v, _ in settings.describe())["AWS_SECRET_ACCESS_KEY"] == "********"


def test_secret_passed_as_a_flag_is_wrapped() -> None:
    settings = load_settings(overrides={"AWS_SECRET_ACCESS_KEY": SECRET}, environ={})
    assert isinstance(settings.aws_secret_access_key, Secret)
    assert SECRET not in repr(settings)


def test_env_example_documents_every_key_with_a_comment() -> None:
    text = env_example()
    lines = text.splitlines()
    for key in SETTING_KEYS:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}="))
        assert lines[index - 1].startswith("# "), key


def test_committed_env_example_is_current_and_parses() -> None:
    committed = Path(__file__).resolve().parents[2] / ".env.example"
    assert committed.read_text() == env_example(), "regenerate with: python -m deploy.settings > .env.example"
    load_settings(env_file=committed, environ={})
    assert set(read_env_file(committed)) == set(SETTING_KEYS)


def test_origin_names_the_flag_the_environment_or_the_env_file_with_its_path(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / "prod.env", RUNPOD_HOST="203.0.113.10")
    settings = load_settings(overrides={"S3_BUCKET": "from-flag"}, env_file=env_file,
                             environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, flag_names={"S3_BUCKET": "--bucket"})
    assert settings.origin("S3_BUCKET") == "the --bucket flag"
    assert settings.origin("AWS_ENDPOINT_URL") == "the environment"
    assert settings.origin("RUNPOD_HOST") == f"the .env file {env_file.resolve()}"
    assert settings.origin("RUNPOD_PORT") == "the default"
    assert settings.check("AWS_ENDPOINT_URL") == "AWS_ENDPOINT_URL (from the environment)"


def test_require_names_missing_keys_found_by_the_caller_and_their_hints_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={}).require("S3_BUCKET", "RUNPOD_API_KEY", also=["RUNPOD_HOST"])
    message = str(err.value)
    assert message.startswith("Missing settings: S3_BUCKET, RUNPOD_API_KEY, RUNPOD_HOST (no .env file at .env)")
    assert "RUNPOD_HOST: or name the host with --hosts or fab -H" in message
    assert "RUNPOD_API_KEY: create one in RunPod's console" in message
    assert message.count(".") >= 1 and "\n" not in message
