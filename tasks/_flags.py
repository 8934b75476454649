"""Numeric task flags: a value that is not a number ends in one sentence naming the flag, not a traceback.

Invoke hands a flag's value over as a string (or the default's type), so every numeric flag goes
through one of these before use; the :class:`~deploy.errors.ConfigError` becomes exit 1 at the
task boundary.

Example: ``whole("12", "--step") == 12``; ``number("1.5", "--older-than") == 1.5``.
"""

from __future__ import annotations

import math

from deploy.errors import ConfigError


def whole(value: object, flag: str, minimum: int = 0) -> int:
    """``value`` as an int of at least ``minimum``, or a ConfigError naming ``flag``."""
    try:
        result = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{flag} must be a whole number, got {value!r}.") from None
    if result < minimum:
        raise ConfigError(f"{flag} must be {minimum} or more, got {result}.")
    return result


def number(value: object, flag: str, minimum: float = 0.0) -> float:
    """``value`` as a finite float of at least ``minimum``, or a ConfigError naming ``flag``."""
    try:
        result = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{flag} must be a number, got {value!r}.") from None
    if not math.isfinite(result) or result < minimum:
        raise ConfigError(f"{flag} must be a number of {minimum:g} or more, got {value!r}.")
    return result
