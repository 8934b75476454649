"""What this install has: the operator's install alone (``scripts/test --unit``) or the training stack too."""

from __future__ import annotations

import importlib.util

import pytest

TRAINING_STACK = all(importlib.util.find_spec(name) is not None for name in ("torch", "lightning"))
"""torch and lightning are installed (the ``train`` extra): the training side's modules import."""

needs_training = pytest.mark.skipif(not TRAINING_STACK, reason="needs torch and lightning (the train extra); "
                                                                "the full suite (scripts/test) has them")


def missing_training_stack(error: str) -> bool:
    """An import failure that only says torch or lightning is not installed, in an install without them."""
    return not TRAINING_STACK and any(f"No module named '{name}" in error for name in ("torch", "lightning"))
