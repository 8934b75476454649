"""The working tree a native deploy ships: secrets never leave the laptop, whatever the ignore files say."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploy.runtimes.code.tree import select_files

SECRETS = ["prod.env", "config/staging.env", ".envrc", ".env.local", "certs/server.pem", "tls.key", "id_rsa",
           "keys/id_ed25519", "keys/id_ed25519.pub", ".netrc", ".aws/credentials", "sub/.aws/config",
           "credentials.json", "credentials-prod.json", ".npmrc", ".pypirc", "bundle.p12", "secrets.yaml",
           "deep/dir/secrets.toml", ".ssh/config", ".git-credentials", "service-account-ci.json",
           "etc/ssh/ssh_host_ed25519_key", "sshd/ssh_host_rsa_key.pub", "putty/deploy.ppk"]
CODE = ["train.py", "pkg/model.py", "configs/base.yaml", "README.md", "envs.py", "keyboard.py"]


def tree(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{name}\n")


def test_secret_files_never_ship_even_when_the_ignore_files_re_include_them(tmp_path: Path) -> None:
    tree(tmp_path, SECRETS + CODE)
    (tmp_path / ".deployignore").write_text("!*\n" + "".join(f"!{n}\n" for n in SECRETS))
    (tmp_path / ".gitignore").write_text("!prod.env\n")
    shipped = set(select_files(tmp_path))
    assert shipped & set(SECRETS) == set()
    assert set(CODE) <= shipped


def test_the_active_env_file_stays_home_whatever_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree(tmp_path, ["settings/deploy-settings.txt", "other.cfg", "train.py"])
    shipped = set(select_files(tmp_path, keep_home=[tmp_path / "settings/deploy-settings.txt"]))
    assert shipped == {"other.cfg", "train.py"}
    monkeypatch.setenv("ENV_FILE", str(tmp_path / "other.cfg"))  # the file fab's settings come from
    assert set(select_files(tmp_path)) == {"settings/deploy-settings.txt", "train.py"}


def test_a_link_out_of_the_tree_or_to_a_secret_does_not_ship(tmp_path: Path) -> None:
    outside = tmp_path / "home"
    tree(outside, [".aws/credentials"])
    root = tmp_path / "project"
    tree(root, ["train.py", "tls.key"])
    (root / "creds.txt").symlink_to(outside / ".aws/credentials")
    (root / "innocent.txt").symlink_to(root / "tls.key")
    (root / "alias.py").symlink_to(root / "train.py")
    assert set(select_files(root)) == {"train.py", "alias.py"}


def test_files_keep_their_permission_bits(tmp_path: Path) -> None:
    tree(tmp_path, ["private.cfg", "run.sh", "plain.py"])
    os.chmod(tmp_path / "private.cfg", 0o600)
    os.chmod(tmp_path / "run.sh", 0o755)
    os.chmod(tmp_path / "plain.py", 0o644)
    files = select_files(tmp_path)
    assert {rel: f.mode for rel, f in files.items()} == {"private.cfg": 0o600, "run.sh": 0o755, "plain.py": 0o644}
