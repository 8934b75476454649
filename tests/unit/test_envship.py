"""Which keys go to the host's .env, and the one dialect it is written in (deploy.hosts.envfile)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dotenv import dotenv_values

from deploy.errors import ConfigError
from deploy.hosts.envfile import plan_env, render_env
from deploy.remote.supervisor import parse_dotenv
from deploy.settings import load_settings

SECRET = "s3cr3t-value-never-shown-0123456789"

# Every value here must reach every reader unchanged.
ACCEPTED = {
    "hash": "a#b",
    "space_hash": "value #not a comment",
    "leading_hash": "#starts",
    "double_quotes": '"quoted"',
    "inner_double": 'say "hi" now',
    "equals": "a=b==c",
    "spaces": "  both ends  ",
    "only_spaces": "   ",
    "empty": "",
    "dollar": "$HOME and $PATH",
    "dollar_brace_open": "${NOT_CLOSED",
    "dollar_colon": "${X:abc}",
    "dollar_dollar": "$$",
    "backslash": "C:\\Users\\me",
    "backslash_n": "a\\nb",
    "backslash_quote": 'x\\"y',
    "unicode": "naïve ünïcødé 日本語 😀",
    "nbsp_and_zero_width": "a\u00a0b\u200bc\ufeffd",
    "url": "https://user:pa%40ss@example.com/path?q=1&r=2",
    "json": '{"k": [1, 2], "s": "x"}',
    "slashes_and_plus": "abc/def+ghi=jkl/mno",
}

LINE_SEPARATORS = ["\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
CONTROLS = ["\x00", "\x01", "\t", "\x1b", "\x1f", "\x7f", "\x80", "\x9f", "\ud800"]
REFUSED = {
    **{f"separator U+{ord(c):04X}": f"a{c}INJECTED=1" for c in LINE_SEPARATORS},
    **{f"control U+{ord(c):04X}": f"a{c}b" for c in CONTROLS},
    "single quote": "it's",
    "single-quoted": "'quoted'",
    "double backslash": "a\\\\b",
    "trailing backslash": "a\\",
    "expansion": "${HOME}",
    "expansion with default": "x${HOME:-/root}y",
    "empty expansion": "${}",
}


def settings_with(tmp_path: Path, text: str, **environ: str):
    env_file = tmp_path / ".env"
    env_file.write_text(text)
    return load_settings(env_file=env_file, environ=environ), environ


def keyed(values: dict[str, str]) -> dict[str, str]:
    return {f"V_{name.upper()}": value for name, value in values.items()}


def compose_go_single_quoted(line: str) -> tuple[str, str]:
    """compose-go's dotenv (Compose v2), ported for one ``KEY='value'`` line: key and value.

    From compose-spec/compose-go dotenv/parser.go, ``extractVarValue``: inside single quotes a
    backslash escapes only the quote (``\\'``); every other character, ``$`` included, is kept as
    it is, and nothing is interpolated (``expandVariables`` runs for double quotes and unquoted
    values only). Older releases kept the escaped quote's backslash; both agree on the dialect.
    """
    key, _, rest = line.partition("=")
    assert rest[0] == "'"
    chars: list[str] = []
    escape = False
    for char in rest[1:]:
        if char != "'":
            if not escape and char == "\\":
                escape = True
                continue
            if escape:
                escape = False
                chars.append("\\")
            chars.append(char)
            continue
        if escape:
            escape = False
            chars.append(char)
            continue
        return key, "".join(chars)
    raise ValueError("unterminated quoted value")


# --------------------------------------------------------------------------- which keys go


def test_training_keys_go_and_operator_keys_stay(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, (
        f"AWS_ACCESS_KEY_ID=access-id\nAWS_SECRET_ACCESS_KEY={SECRET}\nS3_BUCKET=my-bucket\n"
        "RUNPOD_HOST=203.0.113.10\nRUNPOD_API_KEY=rp-secret\nRUNPOD_SSH_KEY=~/.ssh/id\n"
        "REMOTE_DIR=/workspace/x\nWANDB_API_KEY=wandb\nBATCH_SIZE=8\nSSH_STRICT_HOST_KEYS=1\n"))
    shipment = plan_env(settings, extra={"IMAGE": "train:abc"}, environ=environ)
    assert "AWS_SECRET_ACCESS_KEY" in shipment.keys and "WANDB_API_KEY" in shipment.keys
    assert {"BATCH_SIZE", "S3_BUCKET", "IMAGE"} <= set(shipment.keys)
    for key in ("RUNPOD_HOST", "RUNPOD_API_KEY", "RUNPOD_SSH_KEY", "REMOTE_DIR", "SSH_STRICT_HOST_KEYS",
                "SHIP_ENV_INCLUDE"):
        assert key not in shipment.keys
    text = shipment.content().decode()
    assert f"AWS_SECRET_ACCESS_KEY='{SECRET}'\n" in text and "IMAGE='train:abc'\n" in text
    assert SECRET not in repr(shipment)
    assert {"RUNPOD_HOST", "RUNPOD_API_KEY", "REMOTE_DIR", "SSH_STRICT_HOST_KEYS"} <= set(shipment.left_behind)


def test_settings_that_steer_the_operators_side_stay_on_the_laptop(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, "S3_BUCKET=my-bucket\nRUNTIME=native\nPOD_GPU_COUNT=2\n"
                                                "MAX_PRICE_PER_HOUR=1.5\nDATASET=ljspeech\n")
    shipment = plan_env(settings, environ=environ)
    assert {"S3_BUCKET", "DATASET"} <= set(shipment.keys)
    assert {"RUNTIME", "POD_GPU_COUNT", "MAX_PRICE_PER_HOUR"} <= set(shipment.left_behind)
    assert not {"RUNTIME", "POD_GPU_COUNT", "MAX_PRICE_PER_HOUR"} & set(shipment.keys)


def test_unrelated_tokens_stay_on_the_laptop_by_default(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, (
        "S3_BUCKET=my-bucket\nGITHUB_TOKEN=ghp-x\nAWS_SESSION_TOKEN=other-account\nOPENAI_API_KEY=k\n"
        "WANDB_API_KEY=w\nHF_TOKEN=h\nHUGGING_FACE_HUB_TOKEN=h2\nNCCL_DEBUG=INFO\nTRAIN_LR=0.1\nPYTHONHASHSEED=0\n"))
    shipment = plan_env(settings, extra={"NODE_RANK": "0"}, environ=environ)
    assert {"WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "NCCL_DEBUG", "TRAIN_LR", "PYTHONHASHSEED",
            "S3_BUCKET", "NODE_RANK"} <= set(shipment.keys)
    assert set(shipment.left_behind) == {"GITHUB_TOKEN", "AWS_SESSION_TOKEN", "OPENAI_API_KEY"}
    assert b"ghp-x" not in shipment.content() and b"other-account" not in shipment.content()


def test_the_include_list_adds_keys_and_star_ships_all_but_the_operators(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, "GITHUB_TOKEN=g\nMYAPP_URL=u\nMYAPP_KEY=k\nRUNPOD_API_KEY=r\n"
                                                "SHIP_ENV_INCLUDE=MYAPP_*\n")
    shipment = plan_env(settings, environ=environ)
    assert {"MYAPP_URL", "MYAPP_KEY"} <= set(shipment.keys) and "GITHUB_TOKEN" in shipment.left_behind
    settings, environ = settings_with(tmp_path, "GITHUB_TOKEN=g\nRUNPOD_API_KEY=r\nSHIP_ENV_INCLUDE=*\n")
    shipment = plan_env(settings, environ=environ)
    assert "GITHUB_TOKEN" in shipment.keys
    assert set(shipment.left_behind) == {"RUNPOD_API_KEY", "SHIP_ENV_INCLUDE"}


def test_the_exclude_list_wins(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, "S3_BUCKET=my-bucket\nWANDB_API_KEY=w\nHF_TOKEN=h\n"
                                      "SHIP_ENV_EXCLUDE=HF_*,S3_BUCKET\n")
    shipment = plan_env(settings, environ=environ)
    assert "WANDB_API_KEY" in shipment.keys
    assert {"HF_TOKEN", "S3_BUCKET"} <= set(shipment.left_behind) and "HF_TOKEN" not in shipment.keys


def test_process_environment_wins_for_unknown_keys(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, "WANDB_API_KEY=from-file\n", WANDB_API_KEY="from-env")
    assert b"WANDB_API_KEY='from-env'\n" in plan_env(settings, environ=environ).content()


def test_a_value_with_a_line_break_is_refused_naming_the_key(tmp_path: Path) -> None:
    settings, environ = settings_with(tmp_path, 'WANDB_API_KEY="a\nb"\n')
    with pytest.raises(ConfigError, match="value of WANDB_API_KEY contains a control or line-separator") as caught:
        plan_env(settings, environ=environ)
    assert "a\nb" not in str(caught.value)


def test_a_key_no_reader_accepts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'MY-KEY' cannot be a variable"):
        render_env({"MY-KEY": "x"})


# --------------------------------------------------------------------------- the dialect


def test_the_dialect_is_one_single_quoted_line_per_key() -> None:
    assert render_env({"B": "x # y", "A": "$HOME"}) == "A='$HOME'\nB='x # y'\n"


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_an_accepted_value_reaches_every_reader_unchanged(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/should/not/appear")
    monkeypatch.setenv("X", "should-not-appear")
    value = ACCEPTED[name]
    text = render_env({"KEY": value})
    assert dotenv_values(stream=io.StringIO(text)) == {"KEY": value}  # deploy.settings, the training side
    assert dotenv_values(stream=io.StringIO(text), interpolate=False) == {"KEY": value}
    assert parse_dotenv(text) == {"KEY": value}  # the native supervisor
    assert compose_go_single_quoted(text.rstrip("\n")) == ("KEY", value)  # Compose v2


def test_all_accepted_values_in_one_file_keep_their_keys() -> None:
    text = render_env(keyed(ACCEPTED))
    assert dotenv_values(stream=io.StringIO(text)) == keyed(ACCEPTED)
    assert parse_dotenv(text) == keyed(ACCEPTED)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_value_some_reader_would_change_is_refused(name: str) -> None:
    value = REFUSED[name]
    with pytest.raises(ConfigError, match=r"^The value of WANDB_API_KEY contains .*; change the value or list "
                                          "WANDB_API_KEY in SHIP_ENV_EXCLUDE.$") as caught:
        render_env({"S3_BUCKET": "b", "WANDB_API_KEY": value})
    assert value not in str(caught.value)


@pytest.mark.parametrize("separator", LINE_SEPARATORS[1:])
def test_the_supervisor_reader_splits_lines_at_newline_only(separator: str) -> None:
    # A separator python's splitlines() honours must not let a value inject a key on the host.
    with pytest.raises(ValueError, match="line 1 is not KEY='value'"):
        parse_dotenv(f"A='x{separator}INJECTED=1'\n")
    with pytest.raises(ValueError, match="line 1 is not KEY='value'"):
        parse_dotenv(f"A='x'{separator}INJECTED='1'\n")


def test_the_supervisor_reader_refuses_other_dialects_without_quoting_them() -> None:
    assert parse_dotenv("# written by gpu-deploy\n\nA='1'\n") == {"A": "1"}
    for text in ("A=1\n", "export A='1'\n", 'A="1"\n', "A='1' # c\n", "A = '1'\n", "A='it's'\n", "A='${B}'\n"):
        with pytest.raises(ValueError, match=r"^line 1 is not KEY='value' as gpu-deploy writes it$"):
            parse_dotenv(text)


def test_remote_digests_reads_the_files_that_exist_in_one_call(tmp_path: Path) -> None:
    from hashlib import sha256

    from invoke import Context

    from deploy.hosts.envfile import REMOTE_ENV, remote_digests, remote_env_digest

    (tmp_path / REMOTE_ENV).write_text("A=1\n")
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    found = remote_digests(Context(), str(tmp_path), ("docker-compose.yml", "missing.yml", REMOTE_ENV))
    assert found == {"docker-compose.yml": sha256(b"services: {}\n").hexdigest(), REMOTE_ENV: sha256(b"A=1\n").hexdigest()}
    assert remote_env_digest(Context(), str(tmp_path)) == found[REMOTE_ENV]
    assert remote_env_digest(Context(), str(tmp_path / "nowhere")) is None
