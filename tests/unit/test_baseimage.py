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
