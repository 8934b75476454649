"""The base image's background build: which files wait for it, as the workers report them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests.harness.warmup import Warmup, image_files, report, reported


def item(nodeid: str, *fixtures: str) -> SimpleNamespace:
    return SimpleNamespace(nodeid=nodeid, fixturenames=["tmp_path", *fixtures])


def test_workers_report_the_files_whose_tests_use_the_base_image(tmp_path: Path) -> None:
    items = [item("tests/integration/test_pods.py::test_a", "docker_client", "base_image"),
             item("tests/integration/test_pods.py::test_b"), item("tests/unit/test_x.py::test_c", "s3_server")]
    assert image_files(items) == {"tests/integration/test_pods.py"}
    report(str(tmp_path), "gw0", items)
    report(str(tmp_path), "gw1", [item("tests/integration/test_harness.py::test_d[x]", "base_image")])
    assert reported(str(tmp_path)) == {"tests/integration/test_pods.py", "tests/integration/test_harness.py"}


def test_with_no_file_that_needs_the_image_nothing_is_built(tmp_path: Path, monkeypatch) -> None:
    import tests.harness.warmup as warmup

    monkeypatch.setattr(warmup, "_engine", lambda: (_ for _ in ()).throw(AssertionError("asked the engine")))
    waits = Warmup(str(tmp_path))
    waits.begin({"tests/unit/test_x.py", "tests/integration/test_s3_tasks.py"})
    assert waits.waiting() == frozenset()
    waits.join()


def test_without_an_engine_nothing_waits(tmp_path: Path, monkeypatch) -> None:
    import tests.harness.warmup as warmup

    monkeypatch.setattr(warmup, "_engine", lambda: None)
    waits = Warmup(str(tmp_path))
    waits.begin({"tests/e2e/test_demo.py"})
    assert waits.waiting() == frozenset()


def test_the_summary_names_each_step_of_the_build(tmp_path: Path) -> None:
    waits = Warmup(str(tmp_path))
    assert waits.summary() is None
    waits.steps = [(0.0, "base image: started"), (1.0, "base image: debootstrap bookworm from http://x"),
                   (42.0, "base image: pip install torch==2"), (67.0, "base image: docker import as b:1"),
                   (79.0, "base image: done")]
    assert waits.summary() == "base image: built in the background in 79 s (debootstrap 41 s, pip 25 s, docker 12 s)"
