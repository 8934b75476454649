"""What every task shares: building settings from flags, and turning library errors into an exit.

A task parses its flags, builds settings, calls the library and prints the result. An expected
failure (:class:`deploy.errors.DeployError`) becomes one sentence on stderr and exit code 1;
``fab --debug`` keeps the traceback. Every line printed reaches a redirected stdout as it is
printed. While a task runs, no log record shows a credential
(:mod:`deploy.redact`), and the library's retry notices (``S3 did not answer ...; retry 1 of 9 in 1 s``)
are lines on stderr.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from invoke.exceptions import Exit

from deploy import redact
from deploy.errors import DeployError
from deploy.settings import ENV_FILE_VARIABLE, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

ENV_FILE_HELP = f"Path of the .env file to read (default: ./.env, or ${ENV_FILE_VARIABLE})."
JSON_HELP = "Print JSON for scripts instead of a table."
DRY_RUN_HELP = "Print the plan and change nothing (exit 1 when something it needs could not be checked)."
BUCKET_HELP = "Bucket to use instead of S3_BUCKET."
PREFIX_HELP = "Folder inside the bucket instead of S3_PREFIX."
BUCKET_FLAGS = {"bucket": BUCKET_HELP, "prefix": PREFIX_HELP, "env_file": ENV_FILE_HELP}
"""The help of the flags every task that uses the bucket takes (``--bucket``, ``--prefix``, ``--env-file``)."""
RUN_HELP = "The run id (fab runs lists them)."

FLAG_NAMES = {"S3_BUCKET": "--bucket", "S3_PREFIX": "--prefix", "RUN_ID": "--run", "FROM_RUN": "--from-run",
              "IMAGE": "--image", "DATASET": "--dataset", "NUM_NODES": "--nodes", "RUNTIME": "--runtime",
              "BASE_IMAGE": "--base-image", "TRAIN_PROJECT": "--project"}
"""The task flag that sets each key, so a sentence can say "check S3_BUCKET (from the --bucket flag)"."""


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a progress bar redirects it, tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging's own rule: a handler never raises
            self.handleError(record)


def _prepare_logging() -> None:
    """No credential in any log record (fab --debug included); the library's retry notices on stderr; paramiko
    silent unless debugging: its transport thread logs the traceback of a connection a host dropped, which the
    task already says in one sentence."""
    redact.install()
    notices = logging.getLogger("deploy.retry")
    if not any(isinstance(h, _Stderr) for h in notices.handlers):
        notices.addHandler(_Stderr())
        notices.setLevel(logging.WARNING)
        notices.propagate = False
    ssh = logging.getLogger("paramiko")
    if not _debugging() and not any(isinstance(h, logging.NullHandler) for h in ssh.handlers):
        ssh.addHandler(logging.NullHandler())
        ssh.propagate = False


def _line_buffered() -> None:
    """Each line a task prints reaches a redirected stdout as it is printed (``fab deploy-runpod > deploy.log``,
    a CI log), not when a block of them has filled; a terminal is line-buffered already."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # a test's captured stdout has none
    if reconfigure is not None and not getattr(sys.stdout, "line_buffering", True):
        reconfigure(line_buffering=True)


def _debugging() -> bool:
    # `fab --debug` turns on invoke's debug logging; then a traceback helps more than a sentence.
    return logging.getLogger("invoke").isEnabledFor(logging.DEBUG)


def boundary(func: F) -> F:
    """Decorate a task body so a :class:`DeployError` exits with its message, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _prepare_logging()
        _line_buffered()
        try:
            return func(*args, **kwargs)
        except DeployError as exc:
            if _debugging():
                raise
            raise Exit(f"Error: {exc}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("Interrupted; nothing half-written was left behind.", code=130) from None

    return wrapper  # type: ignore[return-value]


def settings_from_flags(env_file: str | None = None, **flags: Any) -> Settings:
    """Settings with task flags on top; ``flags`` are `.env` keys, ``None`` for a flag not given."""
    return load_settings(overrides=flags, env_file=env_file, flag_names=FLAG_NAMES)
