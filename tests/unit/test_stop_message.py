"""What `fab stop` says it did: the step the stop saved, or that nothing new was saved and what S3 has.

The log before and after the stop is the evidence: only a saved-on-stop line the stop itself added
counts (an earlier stop's line stays in the log of a restarted container or a native train.log), and
a start whose last entrypoint line is not the launch was still restoring from S3 when it stopped.
"""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from deploy.errors import StorageError
from deploy.flow import status
from deploy.flow.status import describe_stop, new_lines, newest_in_s3, stop_run, training_launched
from deploy.runtimes.base import ServiceState
from deploy.storage.checkpoints import CheckpointInfo
from deploy.training.stop import SAVED_ON_STOP

EARLIER_RUN = ("entrypoint: resuming from s3://b/p/checkpoints/last.ckpt (step 480)\n"
               "entrypoint: running python -m piper.train fit --ckpt_path=.resume/last.ckpt\n"
               "Epoch 3: 100%\n"
               + SAVED_ON_STOP.format(step=500) + ", uploaded to s3://b/p/checkpoints/stop-epoch=3-step=500.ckpt\n")
RESTORING = "entrypoint: run 20261203-000000-abcd, attempt 2 claimed on gpu-a\n"  # the download comes next
NEWEST = "the newest checkpoint in S3 is step 500 (stop-epoch=3-step=500.ckpt)"


def test_a_stop_that_saved_a_step_says_which_and_where() -> None:
    after = EARLIER_RUN + RESTORING + "entrypoint: running python -m piper.train fit\nEpoch 4: 10%\n" \
        + SAVED_ON_STOP.format(step=512) + ", uploaded to s3://b/p/checkpoints/stop-epoch=4-step=512.ckpt\n"
    said = describe_stop(True, EARLIER_RUN + RESTORING, after, NEWEST)
    assert said == "stopped; saved step 512 (uploaded to s3://b/p/checkpoints/stop-epoch=4-step=512.ckpt)"


def test_a_stop_during_the_restore_says_nothing_new_was_saved_and_names_the_newest_checkpoint() -> None:
    before = EARLIER_RUN + RESTORING  # the earlier stop's saved line is still in the log
    said = describe_stop(True, before, before + "Terminated\n", NEWEST)
    assert said == ("stopped before the training started (it was restoring from S3); nothing new was saved; "
                    + NEWEST)
    assert "saved step 500" not in said


def test_compose_prefixes_are_read_through() -> None:
    prefixed = "".join(f"gpu-deploy-run_train_1  | {line}\n" for line in (EARLIER_RUN + RESTORING).splitlines())
    said = describe_stop(True, prefixed, prefixed, "there is no checkpoint in S3 yet: nothing was trained")
    assert said.startswith("stopped before the training started") and said.endswith("nothing was trained")


def test_a_launched_training_that_saved_nothing_says_so_and_what_the_next_start_resumes_from() -> None:
    before = RESTORING + "entrypoint: running python -m toytrain fit\n"
    assert describe_stop(True, before, before + "done\n", NEWEST) == (
        "stopped; nothing new was saved (no step was saved on the stop); " + NEWEST)
    assert describe_stop(False, before, before, "") == (
        "stopped a training whose supervisor was gone; nothing new was saved (no step was saved on the stop)")


def test_the_same_step_saved_again_by_this_stop_counts() -> None:
    """The line an earlier stop left and the one this stop printed may be equal: the new one is still new."""
    line = SAVED_ON_STOP.format(step=500) + ", uploaded to s3://b/p/checkpoints/stop-epoch=3-step=500.ckpt\n"
    before = EARLIER_RUN + RESTORING + "entrypoint: running python -m piper.train fit\n"
    assert describe_stop(True, before, before + line, NEWEST).startswith("stopped; saved step 500")


def test_new_lines_are_what_follows_the_earlier_tail() -> None:
    before = "".join(f"line {i}\n" for i in range(30))
    assert new_lines(before, before + "new 1\nnew 2\n") == "new 1\nnew 2"
    assert new_lines(before, before) == ""
    assert new_lines("", "a\nb\n") == "a\nb\n"
    moved_on = "".join(f"later {i}\n" for i in range(400))  # more than a tail printed since: all of it is new
    assert new_lines(before, moved_on) == moved_on
    window = "".join(f"line {i}\n" for i in range(10, 30)) + "new\n"  # the tail's window moved; the overlap holds
    assert new_lines(before, window) == "new"


def test_new_lines_in_a_log_that_repeats_itself_or_was_half_written() -> None:
    same = "warning: slow\n" * 400  # every line alike: the stop's own line is still the new one
    assert new_lines(same, ("warning: slow\n" * 399) + "gpu-deploy: saved step 7 on stop\n") == \
        "gpu-deploy: saved step 7 on stop"
    half = "epoch 3\nloss 0.5 (25%"  # the last line was being written when the tail was read
    assert new_lines(half, "epoch 3\nloss 0.5 (25% 50% 100%)\nsaved\n") == "saved"


def test_training_launched_reads_the_newest_start() -> None:
    assert training_launched(EARLIER_RUN) is True
    assert training_launched(EARLIER_RUN + RESTORING) is False
    assert training_launched("no entrypoint here\n") is None


class Listing:
    """A bucket with these checkpoints (or one that fails)."""

    def __init__(self, found: list[CheckpointInfo] | Exception) -> None:
        self.found = found


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch):
    def latest(storage: Listing) -> CheckpointInfo | None:
        if isinstance(storage.found, Exception):
            raise storage.found
        return storage.found[-1] if storage.found else None

    monkeypatch.setattr(status, "latest_checkpoint", latest)
    return Listing


def _checkpoint(step: int) -> CheckpointInfo:
    return CheckpointInfo(name=f"stop-epoch=3-step={step}.ckpt", key=f"p/checkpoints/stop-epoch=3-step={step}.ckpt",
                          size=1, uploaded=datetime.now(timezone.utc), epoch=3, step=step, val_loss=None,
                          step_source="name")


def test_newest_in_s3_names_the_checkpoint_none_or_why_it_was_not_checked(bucket) -> None:
    assert newest_in_s3(None) == ""
    assert newest_in_s3(bucket([_checkpoint(500)])) == NEWEST
    assert newest_in_s3(bucket([])) == "there is no checkpoint in S3 yet: nothing was trained"
    assert newest_in_s3(bucket(StorageError("The bucket b does not exist."))) == \
        "S3 not checked: The bucket b does not exist."


class FakeService:
    """A running service whose log gains ``printed`` when it is stopped."""

    kind = "container"

    def __init__(self, log: str, printed: str) -> None:
        self.log, self.printed, self.stopped = log, printed, False

    def state(self, conn: Any) -> ServiceState:
        return ServiceState(exists=True, running=not self.stopped, status="running" if not self.stopped else "exited")

    def logs(self, conn: Any, tail: int = 100) -> str:
        return "\n".join(self.log.splitlines()[-tail:]) + "\n"

    def stop(self, conn: Any, timeout: int = 120) -> None:
        self.stopped, self.log = True, self.log + self.printed


def test_stop_run_during_a_restore_reads_the_bucket_and_says_what_the_next_start_resumes_from(
        bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    service = FakeService(EARLIER_RUN + RESTORING, "")
    monkeypatch.setattr(status, "service_on", lambda conn, remote_dir: (service, ()))
    said = stop_run(SimpleNamespace(), "/w", 30, bucket([_checkpoint(480), _checkpoint(500)]))
    assert service.stopped and said.endswith("nothing new was saved; " + NEWEST)
