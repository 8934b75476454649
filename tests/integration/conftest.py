"""Fixtures the integration tests share: the test's own corner of the bucket as a Storage, a cache
folder of the test's own (``pytestmark = pytest.mark.usefixtures("own_cache")`` in a file that wants one), and
an S3 server of the test's own holding the module's ``BUCKET``."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.settings import load_settings
from deploy.storage import Storage


@pytest.fixture
def storage(s3_env: dict[str, str]) -> Storage:
    """The bucket and prefix of ``s3_env`` (moto's server over HTTP), as the tasks build it."""
    return Storage.from_settings(load_settings())


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU_DEPLOY_CACHE_DIR in this test's folder: no listing or ETag cached by another test is seen."""
    monkeypatch.setenv("GPU_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def private_s3(request: pytest.FixtureRequest, tmp_path: Path):
    """A moto server of this test's own with the module's ``BUCKET``: it can be frozen or stopped alone."""
    from tests.harness.training_runs import private_s3_server  # imports Lightning: only the tests that train

    yield from private_s3_server(tmp_path / "moto", request.module.BUCKET)
