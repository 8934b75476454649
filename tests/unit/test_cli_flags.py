"""Flags follow the ecosystem: ``-h`` is help for every task, never a short flag for ``--hosts``."""

from __future__ import annotations

import pytest
from invoke import Task

from fabfile import ns
from tests.harness.fab import all_tasks, run_fab


TASKS = all_tasks(ns)


@pytest.mark.parametrize("name,task", TASKS, ids=[name for name, _ in TASKS])
def test_no_task_takes_h_as_a_short_flag(name: str, task: Task) -> None:
    taken = {alias for argument in task.get_arguments() for alias in argument.names if len(alias) == 1}
    assert "h" not in taken, f"fab {name} -h would not print help"


def test_deploy_runpod_dash_h_prints_help() -> None:
    result = run_fab("deploy-runpod", "-h", timeout=120)
    assert result.returncode == 0 and "Usage: fab [--core-opts] deploy-runpod" in result.stdout
    assert "--hosts=STRING" in result.stdout
