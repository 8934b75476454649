"""Run many `fab` commands at once, each in its own fresh process forked from one that imported fab already.

A `fab` subprocess spends a second or more importing boto3, fabric, rich and the runpod SDK before its task
starts; a hundred of them on two cores is minutes of imports. Here a multiprocessing forkserver imports
them once (:data:`PRELOAD`) and forks a new process for every command, which sets its own environment,
folder and stdout/stderr files and calls fab's own ``program.run``, as the `fab` script does. Each result
carries the task's own wall time (from parsing the command line to the exit), which is what a "fails
within seconds" test should measure, not the imports.

Example::

    with FabRunner(workers=8) as runner:
        results = runner.run_all({"closed": Command(["runs"], env, cwd)})
    results["closed"].returncode, results["closed"].stderr, results["closed"].seconds
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.pool import Pool

from tests.harness.fab import REPO

PRELOAD = ["fabfile", "fabric.main", "boto3", "botocore.session", "runpod", "paramiko", "requests", "rich.console",
           "deploy.storage", "deploy.hosts", "deploy.pods.api", "deploy.watch.managed"]


@dataclass(frozen=True)
class Command:
    args: list[str]
    env: Mapping[str, str]
    cwd: str
    timeout: float = 60.0


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    args: list[str] = field(default_factory=list)


def _run(args: list[str], env: Mapping[str, str], cwd: str) -> tuple[int, str, str, float]:
    """In the forked process: fab as a user runs it, with its output in files."""
    import io
    import logging
    import sys
    import tempfile
    import time
    import traceback

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    logging.root.handlers.clear()  # as in a fresh interpreter: fab --debug configures logging itself
    logging.root.setLevel(logging.WARNING)
    from fabric.main import program

    started = time.monotonic()
    code = 0
    try:
        program.run(["fab", "--search-root", str(REPO), *args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught one (fab --debug re-raises)
        traceback.print_exc()
        code = 1
    seconds = time.monotonic() - started
    sys.stdout.flush()
    sys.stderr.flush()
    out.seek(0)
    err.seek(0)
    return code, out.read().decode(errors="replace"), err.read().decode(errors="replace"), seconds


class FabRunner:
    """A pool of forked `fab` processes, one fresh process per command."""

    def __init__(self, workers: int = 6) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        self._pool: Pool = context.Pool(processes=workers, maxtasksperchild=1)

    def run_all(self, commands: Mapping[str, Command]) -> dict[str, Result]:
        """Every command at once (as many as there are workers); each result by its name."""
        pending = {name: self._pool.apply_async(_run, (c.args, dict(c.env), c.cwd)) for name, c in commands.items()}
        results = {}
        for name, future in pending.items():
            code, out, err, seconds = future.get(timeout=commands[name].timeout)
            results[name] = Result(code, out, err, seconds, commands[name].args)
        return results

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def __enter__(self) -> "FabRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
