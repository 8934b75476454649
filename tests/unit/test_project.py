"""The training project (TRAIN_PROJECT): its requirements, its dependency digest, the image-build context."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from deploy.errors import ConfigError
from deploy.flow.sources import stale_line
from deploy.images.build import PROJECT_REQUIREMENTS, build_context, image_deps
from deploy.project import DEPS_LABEL, TrainProject, image_name, train_requirements
from deploy.settings import load_settings

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "trainer"
TRAIN = ("torch>=2.1", "lightning>=2.2")


def test_requirements_txt_wins_over_pyproject(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("piper-tts[train]\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["numpy"]\n')
    project = TrainProject.at(tmp_path)
    assert project.requirements == "piper-tts[train]\n" and project.requirements_source == "requirements.txt"


def test_pyproject_dependencies_are_the_requirements(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["numpy>=1.26", "librosa"]\n')
    project = TrainProject.at(tmp_path)
    assert project.requirements == "numpy>=1.26\nlibrosa\n" and project.requirements_source == "pyproject.toml"


def test_a_project_without_requirements_has_none(tmp_path: Path) -> None:
    project = TrainProject.at(tmp_path)
    assert project.requirements is None and "no requirements" in project.describe()


def test_a_missing_project_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRAIN_PROJECT .*missing-trainer is not a folder"):
        TrainProject.at(tmp_path / "missing-trainer")


def test_train_project_defaults_to_the_folder_fab_runs_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert TrainProject.from_settings(load_settings(environ={})).root == str(tmp_path)
    other = tmp_path / "my-trainer"
    other.mkdir()
    settings = load_settings(environ={"TRAIN_PROJECT": "my-trainer"})
    assert TrainProject.from_settings(settings).root == str(other)


def test_the_digest_changes_with_requirements_and_base_not_with_code(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("lightning>=2.2\n")
    (tmp_path / "model.py").write_text("A = 1\n")
    first = TrainProject.at(tmp_path).deps_digest(TRAIN, "base:1")
    (tmp_path / "model.py").write_text("A = 2\n")
    assert TrainProject.at(tmp_path).deps_digest(TRAIN, "base:1") == first
    assert TrainProject.at(tmp_path).deps_digest(TRAIN, "base:2") != first
    (tmp_path / "requirements.txt").write_text("lightning>=2.3\n")
    assert TrainProject.at(tmp_path).deps_digest(TRAIN, "base:1") != first
    assert len(first) == 12 and int(first, 16) >= 0


def test_the_image_is_named_by_its_dependencies() -> None:
    project = TrainProject.at(FIXTURE)
    ref = project.image_ref("piper-train:latest", TRAIN, "base:1")
    assert ref == f"piper-train:deps-{project.deps_digest(TRAIN, 'base:1')}"
    assert image_name("registry:5000/team/train:v3") == "registry:5000/team/train"
    assert image_name("registry:5000/team/train") == "registry:5000/team/train"


def test_the_build_context_holds_dependencies_only() -> None:
    with tarfile.open(fileobj=io.BytesIO(build_context(TrainProject.at(FIXTURE)))) as tar:
        names = tar.getnames()
        requirements = tar.extractfile(PROJECT_REQUIREMENTS).read().decode()
        folder = tar.getmember("deploy")
    assert sorted(names) == sorted(["Dockerfile", "pyproject.toml", "README.md", PROJECT_REQUIREMENTS, "deploy"])
    assert folder.isdir()  # empty: gpu-deploy's training code travels with the project's code
    assert requirements == (FIXTURE / "requirements.txt").read_text()
    assert build_context(TrainProject.at(FIXTURE)) == build_context(TrainProject.at(FIXTURE))  # reproducible


def test_the_dockerfile_keeps_the_base_images_torch() -> None:
    text = (Path(__file__).resolve().parents[2] / "docker" / "Dockerfile").read_text()
    assert "-r requirements-project.txt -c constraints.txt" in text
    assert "-r requirements-train.txt -c constraints.txt" in text
    assert "'torch==' + m.version('torch')" in text


def test_the_image_label_is_read_from_a_manifest_config() -> None:
    config = json.dumps({"config": {"Labels": {DEPS_LABEL: "abc123def456"}}})
    assert image_deps(config) == "abc123def456"
    assert image_deps(json.dumps({"config": {"Labels": None}})) is None and image_deps("not json") is None


def test_a_stale_image_is_one_line_naming_the_command() -> None:
    line = stale_line("piper-train:latest", "aaaaaaaaaaaa", "bbbbbbbbbbbb")
    assert "\n" not in line and "fab image-build --push" in line and "deps-bbbbbbbbbbbb" in line
    assert stale_line("t:1", "aaaaaaaaaaaa", "aaaaaaaaaaaa") == ""
    assert stale_line("t:1", None, "aaaaaaaaaaaa") == ""  # an image built without image-build: nothing to compare


def test_the_train_extra_is_read_from_pyproject() -> None:
    assert any(r.startswith("lightning") for r in train_requirements())
