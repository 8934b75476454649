"""Fixtures the integration tests share: the test's own corner of the bucket as a Storage, and a cache
folder of the test's own (``pytestmark = pytest.mark.usefixtures("own_cache")`` in a file that wants one)."""

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
