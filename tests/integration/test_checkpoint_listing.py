"""`fab s3.checkpoints` against the real S3 server: the metrics a trainer's names carry, and damaged objects flagged."""

from __future__ import annotations

import json

import pytest

from deploy.storage import CHECKPOINTS, Storage
from deploy.storage.checkpoints import list_checkpoints, metric_names
from tests.harness.fab import run_fab

pytestmark = pytest.mark.usefixtures("own_cache")


def put(storage: Storage, name: str, data: bytes, **metadata: str) -> None:
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key(CHECKPOINTS, name), Body=data,
                              Metadata=metadata)


def test_the_listing_shows_val_mel_and_flags_a_size_that_differs_from_the_recorded_one(storage: Storage) -> None:
    put(storage, "epoch=3-step=40-val_mel=0.412.ckpt", b"a" * 100, step="40", epoch="3", size="100")
    put(storage, "epoch=5-step=60-val_mel=0.398.ckpt", b"b" * 70, step="60", epoch="5", size="100")  # cut short
    put(storage, "last.ckpt", b"c" * 10)  # an older script's upload: no recorded size, nothing to compare

    found = list_checkpoints(storage)
    assert [cp.name for cp in found] == ["last.ckpt", "epoch=3-step=40-val_mel=0.412.ckpt",
                                         "epoch=5-step=60-val_mel=0.398.ckpt"]
    assert metric_names(found) == ["val_mel"] and found[1].metrics == {"val_mel": 0.412}
    assert [cp.size_mismatch for cp in found] == [False, False, True]

    table = run_fab("s3.checkpoints", timeout=120)
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "name" in line and "step" in line)
    assert "val_mel" in header and "val_loss" not in header
    assert "0.412" in table.stdout and "0.398" in table.stdout
    assert "epoch=5-step=60-val_mel=0.398.ckpt is 70 bytes but was uploaded as 100" in table.stdout
    assert "epoch=3-step=40-val_mel=0.412.ckpt is" not in table.stdout

    rows = json.loads(run_fab("s3.checkpoints", "--json", timeout=120).stdout)
    assert rows[2]["metrics"] == {"val_mel": 0.398} and rows[2]["size_mismatch"] is True
    assert rows[2]["recorded_size"] == 100 and rows[0]["recorded_size"] is None
