"""The supervisor's bookkeeping of the training process, without starting a daemon."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from deploy.remote.supervisor import Paths, boot_id, lock_held, start_ticks, take_lock, training_leader


def record(tmp_path: Path, **fields) -> Paths:
    paths = Paths(str(tmp_path))
    os.makedirs(paths.meta, exist_ok=True)
    Path(paths.training).write_text(json.dumps({"pgid": fields.get("pid"), "boot_id": boot_id(), **fields}))
    return paths


def test_the_leader_is_the_recorded_process_only_while_that_very_process_runs(tmp_path: Path) -> None:
    me = os.getpid()
    assert training_leader(record(tmp_path, pid=me, start_ticks=start_ticks(me))) == me
    assert training_leader(record(tmp_path, pid=me, start_ticks=start_ticks(me) - 1)) is None  # a reused pid
    assert training_leader(record(tmp_path, pid=me, start_ticks=start_ticks(me), boot_id="another-boot")) is None


def test_a_command_that_exited_before_it_was_recorded_is_not_a_leader(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert start_ticks(gone.pid) is None
    assert training_leader(record(tmp_path, pid=gone.pid, start_ticks=None)) is None


def test_the_lock_is_seen_as_held_while_another_open_file_holds_it(tmp_path: Path) -> None:
    paths = record(tmp_path, pid=1, start_ticks=None)
    assert not lock_held(paths)
    fd = take_lock(paths)
    assert fd is not None and lock_held(paths) and take_lock(paths) is None
    os.close(fd)
    assert not lock_held(paths)
