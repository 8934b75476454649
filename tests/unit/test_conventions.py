"""One convention for every task, checked by walking fab's whole collection (a new task is held to it at once).

The rules, as a user meets them:

- every task takes ``--env-file``; every task takes ``--bucket`` and ``--prefix`` (overriding S3_BUCKET and
  S3_PREFIX), except the ones in :data:`NO_BUCKET`, which never read either;
- every task that changes local or remote state takes ``--dry-run``; the ones in :data:`READ_ONLY` change
  nothing (or only a cache) and take none;
- every task that prints a table takes ``--json``;
- a duration flag takes a unit (``90s``, ``15m``, ``2h``, ``3d``) and its help names the unit of a bare
  number and the default; a value that is not a duration is one sentence naming the flag;
- a run id is ``--run RUN`` in every task that takes one, checked alike (one sentence); where it must be
  given (train.watch) it may also come as ``RUN``;
- every flag has help; with no settings at all, a task fails in one sentence that names every missing key
  at once, before any connection (RUNPOD_API_KEY with one wording everywhere).

A new task that breaks a rule for a reason adds itself to :data:`NO_BUCKET` or :data:`READ_ONLY` with that
reason; everything else is read from the task itself.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
from invoke import Context, Task
from invoke.exceptions import Exit

from fabfile import ns
from tasks._flags import UNIT_NAMES
from tests.harness.fab import REPO, all_tasks

NO_BUCKET = {
    "pods.gpus": "GPU types and prices come from RunPod's API alone",
}
READ_ONLY = {
    "config": "shows settings",
    "status": "reads the host and the bucket",
    "logs": "reads the host",
    "ssh": "an interactive shell: what changes is the user's doing",
    "tensorboard": "a viewer; its downloads go to a local cache",
    "runs.list": "reads the bucket (its index is a cache)",
    "runs.show": "reads the bucket; --plot writes a picture the user named",
    "s3.checkpoints": "reads the bucket",
    "s3.check": "a check; its probe objects are deleted again",
    "images.list": "reads the bucket",
    "pods.list": "reads the API (pods.json is its cache)",
    "pods.gpus": "reads the API",
}
DURATION_WORDS = ("seconds", "minutes", "hours", "how long", "how often", "duration")


TASKS = all_tasks(ns)
IDS = [name for name, _ in TASKS]

_DESCRIBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from fabfile import ns
def walk(c, prefix=""):
    for name, task in c.tasks.items():
        yield prefix + name, task
    for name, sub in c.collections.items():
        yield from walk(sub, prefix + name + ".")
print(json.dumps({name: [[a.name, sorted(a.names), a.help or ""] for a in task.get_arguments()]
                  for name, task in walk(ns)}))
"""


@dataclass(frozen=True)
class Arg:
    name: str
    names: tuple[str, ...]
    help: str


def _describe() -> dict[str, list[Arg]]:
    """Every task's arguments with their help, from a fresh interpreter: invoke hands a task's help to the
    first ``get_arguments()`` call only, and other tests here call it first."""
    out = subprocess.run([sys.executable, "-c", _DESCRIBE, str(REPO)], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    return {name: [Arg(n, tuple(names), text) for n, names, text in args] for name, args in json.loads(out).items()}


ARGS = _describe()


def flags(name: str) -> set[str]:
    return {"--" + n.replace("_", "-") for arg in ARGS[name] for n in arg.names if len(n) > 1}


def durations(name: str) -> list[str]:
    """The task's duration flags: their help speaks of time."""
    return [arg.name for arg in ARGS[name] if any(word in arg.help.lower() for word in DURATION_WORDS)]


def run_task(task: Task, **kwargs: object) -> str:
    """Run the task's body here (no settings, no servers: the conftest empties both); its one-line error."""
    with pytest.raises(Exit) as err:
        task(Context(), **kwargs)
    assert err.value.code == 1
    message = str(err.value.message)
    assert "\n" not in message.strip() and message.startswith("Error: "), message
    return message


def required(task: Task) -> dict[str, object]:
    """Values for a task's positional arguments (invoke requires them)."""
    return {name: "20261203-000000-abcd" if name == "run" else "x" for name in task.positional}


def test_the_lists_name_only_tasks_that_exist() -> None:
    assert set(NO_BUCKET) <= set(IDS) and set(READ_ONLY) <= set(IDS) and set(ARGS) == set(IDS)


@pytest.mark.parametrize("name,task", TASKS, ids=IDS)
def test_every_task_takes_env_file_and_the_bucket_flags(name: str, task: Task) -> None:
    assert "--env-file" in flags(name), f"fab {name} takes no --env-file"
    if name not in NO_BUCKET:
        assert {"--bucket", "--prefix"} <= flags(name), f"fab {name} takes no --bucket/--prefix"


@pytest.mark.parametrize("name,task", TASKS, ids=IDS)
def test_every_task_that_changes_something_takes_dry_run(name: str, task: Task) -> None:
    assert name in READ_ONLY or "--dry-run" in flags(name), f"fab {name} changes state but takes no --dry-run"


@pytest.mark.parametrize("name,task", TASKS, ids=IDS)
def test_every_task_that_prints_a_table_takes_json(name: str, task: Task) -> None:
    if "make_table(" in inspect.getsource(task.body):
        assert "--json" in flags(name), f"fab {name} prints a table but takes no --json"


@pytest.mark.parametrize("name,task", TASKS, ids=IDS)
def test_every_flag_has_help(name: str, task: Task) -> None:
    missing = [arg.name for arg in ARGS[name] if not arg.help.strip()]
    assert missing == [], f"fab {name}: no help for {missing}"


@pytest.mark.parametrize("name,task", [(n, t) for n, t in TASKS if durations(n)],
                         ids=[n for n, t in TASKS if durations(n)])
def test_duration_flags_take_units_and_say_their_default_and_unit(name: str, task: Task) -> None:
    for flag in durations(name):
        text = next(arg.help for arg in ARGS[name] if arg.name == flag)
        assert "(default " in text, f"fab {name} --{flag}: the help names no default"
        assert any(f"a bare number is {unit}" in text for unit in UNIT_NAMES.values()), \
            f"fab {name} --{flag}: the help does not say what a bare number means"
        message = run_task(task, **required(task), **{flag: "2x"})
        assert f"{flag.replace('_', '-')} must be a duration such as 90s, 15m, 2h or 3d" in message, message
        message = run_task(task, **required(task), **{flag: "90m"})
        assert f"--{flag.replace('_', '-')}" not in message, f"fab {name} refused --{flag}=90m: {message}"


RUN_TASKS = [(n, t) for n, t in TASKS if "run" in {a.name for a in ARGS[n]}]


def test_the_tasks_that_take_a_run_are_the_expected_ones() -> None:
    assert {n for n, _ in RUN_TASKS} >= {"deploy-runpod", "runs.show", "tensorboard", "train.run", "train.watch"}
    for name in IDS:  # a run id under another name would be a second convention
        assert not {"run_id", "run_name"} & {a.name for a in ARGS[name]}, name


@pytest.mark.parametrize("name,task", RUN_TASKS, ids=[n for n, _ in RUN_TASKS])
def test_a_run_id_is_taken_and_checked_alike(name: str, task: Task) -> None:
    assert "--run" in flags(name)
    message = run_task(task, **{**required(task), "run": "../other"})
    assert message == ("Error: '../other' is not a run id (letters, digits, '.', '_' and '-', up to 128); "
                       "`fab runs` lists them."), message


def test_train_watch_takes_its_run_as_run_or_as_a_flag() -> None:
    from tests.harness.fab import run_fab

    for args in (["train.watch", "../x"], ["train.watch", "--run", "../x"]):
        result = run_fab(*args, env={"ENV_FILE": ""}, timeout=120)
        assert result.returncode == 1 and "'../x' is not a run id" in result.stderr, result.stderr


MISSING = {
    "deploy-runpod": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET", "RUNPOD_HOST"),
    "train.run": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET", "RUNPOD_API_KEY"),
    "train.watch": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET", "RUNPOD_API_KEY"),
    "status": ("RUNPOD_HOST",), "logs": ("RUNPOD_HOST",), "ssh": ("RUNPOD_HOST",), "stop": ("RUNPOD_HOST",),
    "sync-from-runpod": ("RUNPOD_HOST",), "build-ext": ("RUNPOD_HOST",),
    "pods.list": ("RUNPOD_API_KEY",), "pods.gpus": ("RUNPOD_API_KEY",), "pods.up": ("RUNPOD_API_KEY",),
    "pods.down": ("RUNPOD_API_KEY",),
    "runs.list": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET"),
    "runs.show": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET"),
    "tensorboard": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET"),
    "images.list": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET"),
    "s3.checkpoints": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET"),
    "s3.check": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET"),
}
"""What each task names when there are no settings at all (the tasks that need something besides a flag)."""


@pytest.mark.parametrize("name", sorted(MISSING))
def test_with_no_settings_a_task_names_every_missing_key_at_once(name: str) -> None:
    if name == "tensorboard":  # without its extra, the task says that first (a local check)
        pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    task = dict(TASKS)[name]
    message = run_task(task, **required(task))
    assert message.startswith(f"Error: Missing settings: {', '.join(MISSING[name])} (no .env file at .env)"), message
    if "RUNPOD_API_KEY" in MISSING[name]:
        assert "RUNPOD_API_KEY: create one in RunPod's console under Settings > API Keys" in message


def test_the_pod_api_names_a_missing_key_as_every_task_does() -> None:
    from deploy.errors import ConfigError
    from deploy.pods.api import PodApi

    with pytest.raises(ConfigError) as err:
        PodApi(None)
    assert str(err.value).startswith("Missing settings: RUNPOD_API_KEY (no .env file at .env)")
    assert "RUNPOD_API_KEY: create one in RunPod's console under Settings > API Keys" in str(err.value)
