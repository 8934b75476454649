"""What every task shares: building settings from flags, and turning library errors into an exit.

A task parses its flags, builds settings, calls the library and prints the result. An expected
failure (:class:`deploy.errors.DeployError`) becomes one sentence on stderr and exit code 1;
``fab --debug`` keeps the traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from invoke.exceptions import Exit

from deploy.errors import DeployError
from deploy.settings import ENV_FILE_VARIABLE, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

ENV_FILE_HELP = f"Path of the .env file to read (default: ./.env, or ${ENV_FILE_VARIABLE})."
JSON_HELP = "Print JSON for scripts instead of a table."
DRY_RUN_HELP = "Print the plan and change nothing."


def _debugging() -> bool:
    # `fab --debug` turns on invoke's debug logging; then a traceback helps more than a sentence.
    return logging.getLogger("invoke").isEnabledFor(logging.DEBUG)


def boundary(func: F) -> F:
    """Decorate a task body so a :class:`DeployError` exits with its message, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
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
    return load_settings(overrides=flags, env_file=env_file)
