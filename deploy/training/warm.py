"""A Python started ahead of the training, with torch and Lightning imported, that waits for its command.

    python -m deploy.training.warm [-- COMMAND...]   # imports, then reads one JSON line on stdin: what to run

(``COMMAND`` is not read: the entrypoint passes the training command so that ``ps`` shows what runs.)

The entrypoint starts it while it does its own work (the lease, the staged uploads, the resume's
download) and, for a reload, while the old training is still saving its stop checkpoint; when the
command is known it writes ``{"argv": [...], "env": {...}}`` and this process becomes the training:
``argv`` is what follows the interpreter (``-m module args...`` or ``script.py args...``), run as
``python`` would run it (``runpy``, ``__main__``, ``sys.argv``, ``sys.path[0]``), with ``env`` as its
whole environment. No CUDA is initialised before that: importing torch does not touch the GPU.

Only modules whose import does not depend on the project are imported ahead (``WARM_IMPORTS``,
default ``torch,lightning``; the project's own code is imported fresh by the command, so a code
change is always seen). An end of input (the entrypoint chose not to use it) exits 0 at once.
Standard library only: it runs in the training's interpreter on the host.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import runpy
import sys
from collections.abc import Sequence

IMPORTS_ENV = "WARM_IMPORTS"
DEFAULT_IMPORTS = ("torch", "lightning")


def preload(names: Sequence[str]) -> None:
    """Import what is installed of ``names``; a module that is missing or fails to import is left to the command."""
    for name in names:
        try:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the command imports it again and reports its own error
            continue


def command_argv(python: str, argv: Sequence[str], which: str | None) -> list[str] | None:
    """What follows the interpreter in ``argv`` when ``argv[0]`` is this very interpreter (``which`` is it resolved
    on PATH) and the rest is ``[-u] -m module ...`` or ``[-u] script ...``; None when a warm start cannot run it."""
    if not argv or which is None or os.path.abspath(which) != os.path.abspath(python):
        return None
    rest = list(argv[1:])
    while rest and rest[0] == "-u":  # unbuffered output: become() gets it from PYTHONUNBUFFERED in the environment
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == "-m" and rest[1] and not rest[1].startswith("-"):
        return rest
    if rest and rest[0] and not rest[0].startswith("-"):
        return rest
    return None


def become(argv: Sequence[str], env: dict[str, str]) -> None:
    """Run ``argv`` (``-m module ...`` or ``script ...``) in this process as ``python`` would; raises its SystemExit."""
    os.environ.clear()
    os.environ.update(env)
    if env.get("PYTHONUNBUFFERED"):  # read by the interpreter at its start, which was before the command was known
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=True, write_through=True)  # type: ignore[union-attr]
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the training reads nothing from the entrypoint's pipe
    os.close(null)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]  # runpy sets argv[0] to the module's file
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = [argv[0], *argv[1:]]
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")  # sets sys.argv[0] to the path as given, as python does


def main() -> None:
    names = [n.strip() for n in os.environ.get(IMPORTS_ENV, ",".join(DEFAULT_IMPORTS)).split(",") if n.strip()]
    preload(names)
    line = sys.stdin.buffer.readline()
    if not line.strip():
        os._exit(0)  # not needed: nothing to clean up, and no atexit work of torch's
    message = json.loads(line)
    become(list(message["argv"]), {str(k): str(v) for k, v in message["env"].items()})


if __name__ == "__main__":
    main()
