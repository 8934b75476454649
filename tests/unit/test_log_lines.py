"""What `fab status` shows as "last log lines": no progress-bar debris, whatever state the bar was in."""

from __future__ import annotations

from deploy.hosts.text import printable
from deploy.ledger.live import clean_log_lines


def test_bars_whose_total_is_not_known_yet_are_left_out() -> None:
    """Lightning's sanity-check and validation bars start as `| 0/? [00:00<?, ?it/s]` (the demo showed them)."""
    tail = ("train_1  | Sanity Checking: |          | 0/? [00:00<?, ?it/s]\n"
            "train_1  | Validation: |          | 0/? [00:00<?, ?it/s]\rValidation: |          | 0/? [00:00<?, ?it/s]\n"
            "Validation DataLoader 0:   0%|          | 0/1 [00:00<?, ?it/s]\n"
            "Epoch 1: 100%|##########| 14/14 [00:00<00:00, 37.10it/s, v_num=0]\n"
            "Epoch 7:  13%|#3        | 120/900 [1:02:03<6:44:10, 31.1s/it]\n"
            "train_1  | `Trainer.fit` stopped: `max_epochs=2` reached.\n"
            "train_1  | S3CheckpointSync: end of training: flushing 3 upload(s) (at most 60 s)\n")
    assert clean_log_lines(printable(tail, lines=True)) == [
        "train_1  | `Trainer.fit` stopped: `max_epochs=2` reached.",
        "train_1  | S3CheckpointSync: end of training: flushing 3 upload(s) (at most 60 s)"]


def test_lines_that_only_mention_counts_or_pipes_are_kept() -> None:
    lines = ["train_1  | uploaded 3/4 files [s3://b/p]", "val | 12/30 done", "step 5/10 [ok]"]
    assert clean_log_lines("\n".join(lines)) == lines
