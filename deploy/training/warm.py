"""A Python started ahead of the training, with torch and Lightning imported, that waits for its command.

    python -m deploy.training.warm [-- COMMAND...]   # imports, then reads one JSON line on stdin: what to run
    python -m deploy.training.warm --standby ROOM    # the same, for a command not known yet

(``COMMAND`` is not read: the entrypoint passes the training command so that ``ps`` shows what runs. A
process started ``--standby`` waits for a command that is not known when it starts, the next reload's: its
command line names no training, so ``ps`` and ``pgrep -f train.py`` do not take it for one; ``ROOM`` is blank
space in its arguments, where it writes ``title`` from the message once it runs the command, so that it then
shows as a training started with ``-- COMMAND`` does, see :func:`retitle`.)

The entrypoint starts it while it does its own work (the lease, the staged uploads, the resume's
download) and, for a reload, while the old training is still saving its stop checkpoint; when the
command is known it writes ``{"argv": [...], "env": {...}, "title": [...]}`` and this process becomes the training:
``argv`` is what follows the interpreter (``-m module args...`` or ``script.py args...``), run as
``python`` would run it (``runpy``, ``__main__``, ``sys.argv``, ``sys.path[0]``), with ``env`` as its
whole environment. No CUDA is initialised before that: importing torch does not touch the GPU.

Only modules whose import does not depend on the project are imported ahead (``WARM_IMPORTS``,
default ``torch,lightning,boto3,deploy.training.callbacks``: gpu-deploy's own training code, which a
reload never changes, and what it imports; the project's own code is imported fresh by the command,
so a code change is always seen). An end of input (the entrypoint chose not to use it) exits 0 at once.

When the command returns or exits (``SystemExit``), the process ends the way Python would up to its
teardown, then skips it (:func:`quick_exit`): other threads are joined, the ``atexit`` handlers run
(logging, multiprocessing's children, Lightning's and the user's), every open file object is
closed (so its buffer is written, as a file's deallocation would), and ``os._exit`` ends the process
with the command's code. Python's teardown of a torch process (freeing every module's objects) takes
2.5-3 s of CPU, during which a reload waits with the GPU still held; Python does not promise that
``__del__`` runs for objects alive at exit either. An exception the command does not handle ends the
process as Python would, teardown included. Standard library only: it runs in the training's
interpreter on the host.
"""

from __future__ import annotations

import _io
import atexit
import ctypes
import gc
import importlib
import importlib.util
import io
import json
import os
import runpy
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

IMPORTS_ENV = "WARM_IMPORTS"
DEFAULT_IMPORTS = ("torch", "lightning", "boto3", "deploy.training.callbacks")


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


def retitle(words: Sequence[str]) -> bool:
    """Show ``words`` as this process's command line (``/proc/PID/cmdline``, what ``ps`` and ``pgrep -f`` read), cut
    to the room the process's own arguments took when it started; False when it could not.

    The kernel reads the command line from the memory that held the arguments at ``exec`` (its bounds are
    fields 48-49 of ``/proc/self/stat``); Python keeps its own copy of them, so that memory is free to overwrite.
    The new line ends with the room's last byte a NUL, so the kernel reads no further (the environment follows).
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
        room = end - start
        if start <= 0 or room < 2:
            return False
        text = "\0".join(words).encode(errors="replace")[: room - 1]
        ctypes.memmove(start, text + b"\0" * (room - len(text)), room)
        return True
    except (OSError, ValueError, IndexError):
        return False


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
    if message.get("title"):
        retitle([str(word) for word in message["title"]])
    try:
        become(list(message["argv"]), {str(k): str(v) for k, v in message["env"].items()})
    except SystemExit as exc:
        quick_exit(exit_code(exc.code))
    quick_exit(0)


def exit_code(code: object) -> int:
    """The process's exit status for ``SystemExit(code)``, as Python sets it (a message is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:  # noqa: BLE001 - a closed stderr: the status still says it failed
        pass
    return 1


def quick_exit(code: int) -> NoReturn:
    """End the process as Python's exit would, without its teardown: threads joined, ``atexit`` handlers run,
    open files closed (text layers first, so each writes its buffer to the one below), then ``os._exit``."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()  # what Python does first: wait for the threads that are not daemons
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream has nothing left to write
            pass
    standard = _standard_streams()
    # Every file object's class derives from the C base io.IOBase is an ABC over: testing the type is fast, and reads
    # no attribute of the object (isinstance with the ABC took 0.1 s over a torch process's objects, and woke
    # deprecated attributes).
    files = [obj for obj in gc.get_objects() if issubclass(type(obj), _io._IOBase) and id(obj) not in standard]
    for layer in (io.TextIOBase, io.BufferedIOBase, io.IOBase):
        for handle in files:
            if isinstance(handle, layer):
                try:
                    if not handle.closed:
                        handle.close()
                except Exception:  # noqa: BLE001 - as at teardown, a file that cannot be closed is passed over
                    pass
    os._exit(code)


def _standard_streams() -> set[int]:
    """The standard streams and the layers below them: flushed, never closed (fd 0-2 stay as they are)."""
    found: set[int] = set()
    for stream in (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__):
        while stream is not None and id(stream) not in found:
            found.add(id(stream))
            below = getattr(stream, "buffer", None)
            stream = below if below is not None else getattr(stream, "raw", None)
    return found


if __name__ == "__main__":
    main()
