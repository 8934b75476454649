"""The hook that tells :class:`~deploy.training.callbacks.S3CheckpointSync` a checkpoint file is complete.

``Callback.on_save_checkpoint`` is called *before* the file exists, so the callback wraps the
strategy's checkpoint IO instead: :class:`SyncCheckpointIO`'s ``save_checkpoint`` reports the file
only after the real writer returned. It goes below any ``AsyncCheckpointIO``, whose own
``save_checkpoint`` returns before the file is written (:func:`install_checkpoint_io`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from deploy.errors import TrainingError


class SyncCheckpointIO(CheckpointIO):
    """A checkpoint IO that delegates to ``inner`` and reports each file once it is written.

    ``on_saving(path, checkpoint)`` runs before ``inner.save_checkpoint`` (so a kill while the file
    is written leaves a trace), ``on_saved(path, checkpoint)`` after it returned, i.e. after the file
    is complete on disk; ``on_removed(path)`` after ``inner.remove_checkpoint``.
    """

    def __init__(self, inner: CheckpointIO, on_saved: Callable[[str, dict[str, Any]], None],
                 on_removed: Callable[[str], None],
                 on_saving: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self._on_saving = on_saving
        self._on_saved = on_saved
        self._on_removed = on_removed

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if self._on_saving is not None:
            self._on_saving(str(path), checkpoint)
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        self._on_saved(str(path), checkpoint)

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.inner.load_checkpoint(*args, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)
        self._on_removed(str(path))

    def teardown(self) -> None:
        self.inner.teardown()

    def __getattr__(self, name: str) -> Any:  # anything a specific IO adds (only called when missing here)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def install_checkpoint_io(trainer: Trainer, make: Callable[[CheckpointIO], SyncCheckpointIO]) -> Callable[[], None]:
    """Put ``make(writer)`` in place of the strategy's innermost checkpoint writer; return an undo.

    Wrapping IOs (``AsyncCheckpointIO``) return before the file exists, so the hook goes below them,
    around the IO that really writes.
    """
    strategy = trainer.strategy
    top = strategy.checkpoint_io  # the property fills in the default TorchCheckpointIO
    parent: _WrappingCheckpointIO | None = None
    node: CheckpointIO = top
    while isinstance(node, _WrappingCheckpointIO) and node.checkpoint_io is not None:
        parent, node = node, node.checkpoint_io
    if isinstance(node, SyncCheckpointIO):
        raise TrainingError("S3CheckpointSync is attached twice; attach it once.")
    wrapper = make(node)
    if parent is None:
        strategy.checkpoint_io = wrapper
    else:
        parent._checkpoint_io = wrapper  # the public setter refuses to replace a configured IO

    def undo() -> None:
        if parent is None:
            if strategy._checkpoint_io is wrapper:
                strategy.checkpoint_io = node
        elif parent._checkpoint_io is wrapper:
            parent._checkpoint_io = node

    return undo
