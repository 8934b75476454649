"""The entrypoint's warm processes and reload requests: what :mod:`deploy.training.entrypoint` keeps between trainings.

- :class:`Reloads`: SIGUSR2 (a deploy asks for the new code now) and SIGUSR1 (a deploy connected: warm ahead).
- :class:`Warm`: the :mod:`deploy.training.warm` process the next training starts from, started at the entrypoint's
  start, ahead of a reload, or standing by once a training has run :func:`standby_after` seconds.

Standard library only, like the entrypoint: it runs in the training's interpreter on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from deploy.training.reload import PREWARM_SIGNAL, RELOAD_SIGNAL
from deploy.training.warm import command_argv

WARM_ENV = "WARM_START"  # 0: every training starts in a fresh interpreter (no warm process)
STANDBY_ENV = "WARM_STANDBY"
STANDBY_AFTER = 60.0
"""Seconds a training runs before the entrypoint starts the warm process the next reload will use, kept standing by
until then (``WARM_STANDBY``: other seconds, or ``off``). It costs an interpreter with torch and Lightning imported
(no GPU) and, once, that import's CPU beside the training; a code change in the first minute, while the user still
watches the first steps, is served by the warm process the deploy's probe starts."""
STANDBY_ROOM = 1024
"""Blank bytes in a standby's arguments beyond the current command's length, for the command it shows once it runs
one (:func:`deploy.training.warm.retitle`): a reload's command differs only in its checkpoint path."""


class Reloads:
    """SIGUSR2 received: the deploy asks for the training to start again with the new code (see :mod:`.reload`);
    SIGUSR1: a deploy has connected and may ask for that soon (start the warm process now)."""

    def __init__(self) -> None:
        self.requested = False
        self.ahead = False

    def install(self) -> None:
        signal.signal(RELOAD_SIGNAL, self._request)
        signal.signal(PREWARM_SIGNAL, self._ahead)

    def _request(self, _signum: int, _frame: object) -> None:
        self.requested = True

    def _ahead(self, _signum: int, _frame: object) -> None:
        self.ahead = True

    def take(self) -> bool:
        requested, self.requested = self.requested, False
        return requested

    def take_ahead(self) -> bool:
        ahead, self.ahead = self.ahead, False
        return ahead


class Warm:
    """A :mod:`deploy.training.warm` process importing torch and Lightning while the entrypoint works; the next
    training starts from it when its command runs under this interpreter (``WARM_START=0``: never)."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self.process: subprocess.Popen[bytes] | None = None
        self.expires: float | None = None  # a process started ahead of a reload is dropped then if none came

    def argv(self, command: Sequence[str]) -> list[str] | None:
        if os.environ.get(WARM_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
            return None
        return command_argv(sys.executable, command, shutil.which(command[0]) if command else None)

    def prepare(self, hold: float | None = None, standby: bool = False) -> None:
        """Start the next warm process (nothing when one waits already or the command cannot use it).

        ``hold``: it is started ahead of a reload that may not come, and dropped after that many seconds
        unless a reload or a launch uses it first; None: it is needed now (a start or a reload), kept.
        ``standby``: it is for a reload that may come any time while a training runs, kept. A process started
        while a training runs (``hold`` or ``standby``) names no training on its command line until it runs one,
        so that ``ps`` never shows two.
        """
        if self.process is None and self.argv(self.command) is not None:
            if standby or hold is not None:
                room = " " * (len(" ".join(self.title())) + STANDBY_ROOM)
                argv = [sys.executable, "-m", "deploy.training.warm", "--standby", room]
            else:
                # The command rides along only to be seen: ps, top and nvidia-smi show the training as what it runs.
                argv = self.title()
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE)
            self.expires = None if hold is None else time.monotonic() + hold
        elif hold is None:
            self.expires = None

    def title(self, command: Sequence[str] | None = None) -> list[str]:
        """The command line a warm process running ``command`` (default: this entrypoint's) shows."""
        return [sys.executable, "-m", "deploy.training.warm", "--", *(self.command if command is None else command)]

    def expire(self) -> None:
        """Drop a process started ahead whose reload did not come in time."""
        if self.expires is not None and time.monotonic() > self.expires:
            self.close()

    def ready(self, command: Sequence[str]) -> bool:
        return self.process is not None and self.process.poll() is None and self.argv(command) is not None

    def take(self, command: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes] | None:
        """The warm process, now running ``command`` with ``env``; None when it cannot (then it is let go)."""
        process, self.process, argv = self.process, None, self.argv(command)
        self.expires = None
        if process is None or process.stdin is None:
            return None
        if argv is None or process.poll() is not None:
            self._release(process)
            return None
        try:
            if len(command) > len(argv) + 1:  # python -u (the one option a warm start takes): unbuffered output
                env = {**env, "PYTHONUNBUFFERED": "1"}
            message = {"argv": argv, "env": env, "title": self.title(command)}
            process.stdin.write((json.dumps(message) + "\n").encode())
            process.stdin.close()
        except OSError:  # it died meanwhile
            self._release(process)
            return None
        return process

    def close(self) -> None:
        self.expires = None
        if self.process is not None:
            self._release(self.process)
            self.process = None

    @staticmethod
    def _release(process: subprocess.Popen[bytes]) -> None:
        """An unused warm process is only importing: it is ended at once (a superseded or stopped entrypoint does
        not wait for torch's import to finish), and reaped."""
        try:
            if process.stdin is not None:
                process.stdin.close()
        except OSError:
            pass
        process.kill()
        process.wait()


def standby_after() -> float | None:
    """``WARM_STANDBY`` as seconds (default :data:`STANDBY_AFTER`); None: no process stands by (``off``)."""
    value = os.environ.get(STANDBY_ENV, "").strip().lower()
    if value in ("off", "no", "false", "none"):
        return None
    try:
        return max(0.0, float(value)) if value else STANDBY_AFTER
    except ValueError:
        print(f"entrypoint: {STANDBY_ENV}={value!r} is not a number of seconds or off; using {STANDBY_AFTER:g}",
              flush=True)
        return STANDBY_AFTER
