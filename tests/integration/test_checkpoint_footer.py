"""`fab s3.checkpoints`: the footer explains the `*` mark only when a row carries it."""

from __future__ import annotations

import pytest

from deploy.storage import CHECKPOINTS, Storage
from tests.harness.fab import run_fab

FOOTNOTE = "(* step read from the file name)"

pytestmark = pytest.mark.usefixtures("own_cache")


def put(storage: Storage, name: str, **metadata: str) -> None:
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key(CHECKPOINTS, name), Body=b"x" * 10,
                              Metadata=metadata)


def listing() -> str:
    result = run_fab("s3.checkpoints", timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_no_footnote_when_every_step_came_from_the_upload_metadata(storage: Storage) -> None:
    put(storage, "epoch=0-step=14-val_loss=0.2881.ckpt", step="14", epoch="0", size="10")
    put(storage, "last.ckpt", step="28", epoch="1", size="10")
    out = listing()
    assert "2 checkpoints; latest: last.ckpt." in out
    assert "*" not in out


def test_the_footnote_explains_a_step_read_from_the_name(storage: Storage) -> None:
    put(storage, "epoch=0-step=14-val_loss=0.2881.ckpt", step="14", epoch="0", size="10")
    put(storage, "epoch=1-step=28-val_loss=0.1325.ckpt")  # an older script's upload: no metadata
    out = listing()
    row = next(line for line in out.splitlines() if line.startswith("epoch=1-step=28"))
    assert "28*" in row
    assert f"2 checkpoints; latest: epoch=1-step=28-val_loss=0.1325.ckpt {FOOTNOTE}." in out
