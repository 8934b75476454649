"""Two-process DDP on the CPU (gloo), one process per "node": only global rank zero uploads."""

from __future__ import annotations

import pytest

pytest.importorskip("lightning")

from tests.harness.servers import free_port  # noqa: E402
from tests.harness.training_runs import demo_fit, finish, local_checkpoints, output, start, storage_for  # noqa: E402

pytestmark = pytest.mark.slow


def test_only_rank_zero_uploads_in_two_process_ddp(s3_env, tmp_path) -> None:
    port = str(free_port())
    command = demo_fit("--trainer.max_epochs=2", "--trainer.strategy=ddp", "--trainer.num_nodes=2",
                       "--trainer.devices=1", step_delay=0.0, every=4)
    runs = {}
    for rank in (0, 1):
        # Rank one gets its own prefix: anything it uploaded would land there.
        env = {"ENABLE_S3_SYNC": "1", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "S3_PREFIX": f"{s3_env['S3_PREFIX']}-rank{rank}"}
        runs[rank] = (start(tmp_path / f"node{rank}", command, env), env)
    for rank, (proc, _) in runs.items():
        assert finish(proc, 150, tmp_path / f"node{rank}") == 0, output(tmp_path / f"node{rank}")[-3000:]

    zero = storage_for(runs[0][1])
    one = storage_for(runs[1][1])
    stored = {o.key.rsplit("/", 1)[-1] for o in zero.list(zero.key("checkpoints") + "/")}
    assert stored and stored == set(local_checkpoints(tmp_path / "node0"))
    assert list(zero.list(zero.key("logs") + "/"))
    assert list(one.list(one.key("") or "")) == []
    assert "S3CheckpointSync: uploading" not in output(tmp_path / "node1")
