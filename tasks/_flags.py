"""Numeric and duration task flags: a value that is not one ends in one sentence naming the flag, not a traceback.

Invoke hands a flag's value over as a string (or the default's type), so every numeric flag goes
through one of these before use; the :class:`~deploy.errors.ConfigError` becomes exit 1 at the
task boundary.

Durations take a unit (``90s``, ``15m``, ``2h``, ``3d``); a bare number is in the flag's own unit, which its
help names (:func:`duration_help`): seconds for waits and intervals, hours for ages (``--older-than``).

Example: ``whole("12", "--step") == 12``; ``number("1.5", "--api-every") == 1.5``; ``duration("15m", "--wait") == 900``.
"""

from __future__ import annotations

import math
import re

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


UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
UNIT_NAMES = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.IGNORECASE)


def duration(value: object, flag: str, unit: str = "s", minimum: float = 0.0) -> float:
    """``value`` in seconds: ``90s``, ``15m``, ``2h``, ``3d``, or a bare number in ``unit`` (the flag's own,
    which its help names); a ConfigError naming ``flag`` otherwise.

    >>> duration("15m", "--wait"), duration("2", "--older-than", unit="h")
    (900.0, 7200.0)
    """
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{flag} must be a duration such as 90s, 15m, 2h or 3d (a bare number is "
                          f"{UNIT_NAMES[unit]}), got {value!r}.")
    seconds = float(match.group(1)) * UNITS[(match.group(2) or unit).lower()]
    if not math.isfinite(seconds) or seconds < minimum:
        raise ConfigError(f"{flag} must be at least {say_duration(minimum)}, got {value!r}.")
    return seconds


def duration_help(text: str, default: str, unit: str = "s") -> str:
    """A duration flag's help: what it is, its default, and the unit of a bare number (one per flag)."""
    return (f"{text} (default {default}; a duration such as 90s, 15m, 2h or 3d; a bare number is "
            f"{UNIT_NAMES[unit]}).")


def say_duration(seconds: float) -> str:
    """``90`` -> ``90 s``, ``5400`` -> ``1.5 h``: a duration as a person writes it."""
    for suffix, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size and (seconds % size == 0 or seconds >= 2 * size):
            return f"{seconds / size:g} {suffix}"
    return f"{seconds:g} s"


def run_arg(value: object, latest: bool = False, also: tuple[str, ...] = ()) -> str:
    """A run id from the command line (``RUN`` or ``--run RUN``), checked alike in every task, before any
    connection; ``latest`` (and the words in ``also``, such as ``all``) where the task takes them."""
    from deploy.errors import DeployError
    from deploy.ledger.store import check_run_id

    text = str(value).strip()
    if (latest and text == "latest") or text in also:
        return text
    try:
        return check_run_id(text)
    except DeployError as exc:
        raise ConfigError(str(exc)) from None
