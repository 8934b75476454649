"""Numeric and duration flags of the s3, images and config tasks: text that is not one ends in one sentence
naming the flag and exit 1, before any connection is made (no server needed)."""

from __future__ import annotations

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks import config as config_tasks
from tasks import images as image_tasks
from tasks import s3 as s3_tasks


@pytest.mark.parametrize(("task", "kwargs", "message"), [
    (s3_tasks.abort_uploads, {"older_than": "soon"},
     "--older-than must be a duration such as 90s, 15m, 2h or 3d (a bare number is hours), got 'soon'."),
    (s3_tasks.abort_uploads, {"older_than": "-2"},
     "--older-than must be a duration such as 90s, 15m, 2h or 3d (a bare number is hours), got '-2'."),
    (image_tasks.abort_uploads, {"older_than": "1x"},
     "--older-than must be a duration such as 90s, 15m, 2h or 3d (a bare number is hours), got '1x'."),
    (s3_tasks.upload_checkpoint, {"path": "epoch=1-step=2.ckpt", "step": "ten"}, "--step must be a whole number"),
    (s3_tasks.upload_checkpoint, {"path": "epoch=1-step=2.ckpt", "epoch": "1.5"}, "--epoch must be a whole number"),
])
def test_a_numeric_flag_that_is_not_a_number_is_named(task, kwargs, message: str) -> None:
    with pytest.raises(Exit) as err:
        task(Context(), **kwargs)
    assert err.value.code == 1
    assert str(err.value.message).startswith("Error: " + message)
    assert "\n" not in str(err.value.message)


TASKS = [*s3_tasks.ns.tasks.values(), *image_tasks.ns.tasks.values(), image_tasks.image_to_s3,
         image_tasks.image_from_s3, config_tasks.config]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_no_flag_has_a_numeric_default_that_invoke_would_cast_with_a_traceback(task) -> None:
    # Invoke casts a flag's text with its default's type; int("soon") would escape as a traceback.
    for arg in task.get_arguments():
        assert arg.kind in (str, bool), f"{task.name} --{arg.name} is cast as {arg.kind.__name__}"
