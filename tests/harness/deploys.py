"""What the deploy loops of the end-to-end tests share: the trainer they run and the bucket they read."""

from __future__ import annotations

from deploy.settings import load_settings
from deploy.storage import Storage

DEMO_TRAIN_COMMAND = ("python -m deploy.training.demo fit --trainer.max_steps=100000 --trainer.max_epochs=1000 "
                      "--trainer.enable_progress_bar=false --checkpoint.every_n_train_steps=10 "
                      "--checkpoint.save_top_k=-1 --checkpoint.monitor=null --model.step_delay=0.05")
"""The demo trainer, endless, a checkpoint every 10 steps: what the deploy loops train."""


def storage_of(values: dict[str, str]) -> Storage:
    """The bucket an operator's settings name."""
    return Storage.from_settings(load_settings(environ=values))
