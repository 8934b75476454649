"""The base image recipe and the apt mirror it builds from."""

from __future__ import annotations

from pathlib import Path

from deploy.dev.baseimage import DEFAULT_MIRROR, BaseImageRecipe, apt_mirror


def test_recipe_digest_changes_with_what_goes_in() -> None:
    base = BaseImageRecipe()
    assert base.digest() == BaseImageRecipe().digest()
    assert base.digest() != BaseImageRecipe(pip_packages=("torch==2.13.0",)).digest()
    assert base.tag.startswith("gpu-deploy-base:") and len(base.tag.split(":")[1]) == 12


def test_apt_mirror_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    assert apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_apt_mirror_from_classic_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://ftp.example/debian bookworm main\n")
    assert apt_mirror(tmp_path) == "http://ftp.example/debian"


def test_apt_mirror_falls_back_to_debian(tmp_path: Path) -> None:
    assert apt_mirror(tmp_path) == DEFAULT_MIRROR


def test_mmdebstrap_makes_the_minimal_debian_where_it_is_installed_else_debootstrap(monkeypatch) -> None:
    from deploy.dev import baseimage

    installed = {"debootstrap"}
    monkeypatch.setattr(baseimage.shutil, "which", lambda tool: f"/usr/sbin/{tool}" if tool in installed else None)
    assert baseimage.bootstrapper() == "debootstrap"
    installed.add("mmdebstrap")
    assert baseimage.bootstrapper() == "mmdebstrap"
    installed.clear()
    assert baseimage.bootstrapper() is None
    recipe = BaseImageRecipe()
    for tool in ("mmdebstrap", "debootstrap"):
        command = baseimage.bootstrap_command(tool, recipe, Path("/var/tmp/x/rootfs"), "http://m/debian")
        assert command[0] == tool and command[-3:] == ["bookworm", "/var/tmp/x/rootfs", "http://m/debian"]
        assert "--variant=minbase" in command and "--include=python3,python3-venv,ca-certificates" in command
