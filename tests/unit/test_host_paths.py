"""One set of rules from an untrusted name to a path: the operator's checked_relative and the host program's copy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from deploy.errors import StorageError
from deploy.hosts.dataset import RemoteFile, plan_stage
from deploy.hosts.paths import checked_relative, under

HOST_PROGRAM = Path(__file__).resolve().parents[2] / "deploy" / "remote" / "fetch_dataset.py"


def host_rules():
    spec = importlib.util.spec_from_file_location("fetch_dataset_under_test", HOST_PROGRAM)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


HOSTILE = ["..", "../x", "a/../../x", "a/..", "/x", "//x", "\\x", "\\etc\\passwd", "a\\..\\..\\x", "a\x00b",
           "a\nb", "a\rb", "\x7f", "", ".", "./", "/"]
FINE = {"a//b": "a/b", "./a": "a", "a/": "a", "a/./b": "a/b", "a\\b": "a/b", "wavs/a.wav": "wavs/a.wav",
        "..a/b..": "..a/b..", "a b/c;d": "a b/c;d"}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_on_both_sides(name: str) -> None:
    with pytest.raises(StorageError):
        checked_relative(name)
    with pytest.raises(ValueError):
        host_rules().checked_relative(name)


@pytest.mark.parametrize(("name", "normal"), FINE.items())
def test_both_sides_normalise_alike(name: str, normal: str) -> None:
    assert checked_relative(name) == normal == host_rules().checked_relative(name)


def test_under_joins_only_safe_names() -> None:
    assert under("/data/tiny", "wavs//a.wav") == "/data/tiny/wavs/a.wav"
    with pytest.raises(StorageError, match="The dataset file '../../etc/passwd' leaves its folder"):
        under("/data/tiny", "../../etc/passwd", "The dataset file")


def test_a_hostile_marker_never_reaches_the_delete_list() -> None:
    files = [RemoteFile("a.wav", "p/datasets/tiny/a.wav", 1, "e")]
    marker = {"dataset": "tiny", "files": {"../../etc/passwd": {}, "/etc/shadow": {}, "a//b": {}, "x\x00": {},
                                           "old.wav": {"etag": "e0", "size": 1}}}
    assert plan_stage(files, marker, "tiny", "/data").delete == ("old.wav",)
    for junk in ([], "text", {"dataset": "tiny", "files": ["../x"]}):
        assert plan_stage(files, junk, "tiny", "/data").delete == ()  # type: ignore[arg-type]


def test_the_host_program_refuses_a_link_that_leads_out_of_dest(tmp_path: Path) -> None:
    dest, outside = tmp_path / "data", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "wavs").symlink_to(outside)
    rules = host_rules()
    assert rules.inside(str(dest), "a.wav") == str(dest / "a.wav")
    with pytest.raises(SystemExit, match="resolves outside"):
        rules.inside(str(dest), "wavs/a.wav")
    with pytest.raises(SystemExit, match="refused"):
        rules.inside(str(dest), "../outside/a.wav")


def test_a_hostile_code_manifest_never_reaches_the_delete_list() -> None:
    from deploy.runtimes.code.sync import diff_files

    manifest = ["old.py", "../../home/user/.bashrc", "/etc/passwd", "a//b.py", "x\x00y", "pkg/gone.py"]
    assert diff_files({}, {}, manifest) == ((), ("old.py", "pkg/gone.py"))
