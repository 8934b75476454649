"""Detach a daemon from the SSH session that starts it: double fork, its own session, stdio to a log.

Standard library only: deploy copies this file beside the host programs that use it (``supervisor.py``,
``backstop.py``, both in the run's ``.gpu-deploy/``), and each imports it from its own folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable


def detach(daemon: Callable[[int], None], log: str, mode: int = 0o600) -> str:
    """Run ``daemon(ready)`` in a grandchild of this process; return what it wrote to ``ready`` (its pid).

    The grandchild has its own session (no terminal, no SIGHUP when the SSH session ends), stdin from
    /dev/null, stdout and stderr appended to ``log`` (made with ``mode``). ``daemon`` writes its pid to
    the file descriptor ``ready`` once it runs, closes it, and ends the process itself (``os._exit``); one
    that returns or raises ends with exit 1. The empty string: the daemon ended before it wrote its pid.
    """
    read_end, ready = os.pipe()
    first = os.fork()
    if first == 0:
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDONLY)
            logfile = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
            for fd, target in ((null, 0), (logfile, 1), (logfile, 2)):
                os.dup2(fd, target)
            os.close(null)
            os.close(logfile)
            daemon(ready)
        finally:
            os._exit(1)
    os.close(ready)
    os.waitpid(first, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.read().decode().strip()
