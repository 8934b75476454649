"""``fab build-ext``: the training project's compiled parts built on the host, where the training runs.

Some trainers carry code compiled for the machine that runs them (Piper: a Cython extension that
``build_monotonic_align.sh`` builds, a C bridge that ``setup.py build_ext`` builds). Built on the
laptop, it would not load on the host; so the build runs in the training's own environment there, as
:meth:`~deploy.runtimes.base.Service.shell_command` of the host's runtime gives it: a one-off
container of the ``train`` service (compose: the image's python and compiler, REMOTE_DIR at
``/workspace``) or the run's virtualenv first on PATH (native), in REMOTE_DIR either way.

gather (which build files REMOTE_DIR has; read-only) -> :func:`plan_build` (pure: the commands) ->
:func:`run_build` (each command in turn, its output printed as it comes, cleaned like ``fab logs``).
A command that fails ends the build: one sentence names it and its exit code, then its last lines.

The result stays: the code sync removes only files a deploy shipped and sends only what the working
tree has (deploy.runtimes.code.sync), so a host's ``*.so`` and ``build/`` are never touched, as long
as the tree does not ship files of the same names (Piper's ``.gitignore`` keeps ``*.so`` and
``build`` home; ``.deployignore`` can add more).

Example::

    plan = prepare_build(conn, "root@gpu:22", "/workspace/train", settings.build_command)
    print("\\n".join(plan.describe()))
    result = run_build(conn, plan, sys.stdout)
"""

from __future__ import annotations

import fnmatch
import shlex
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from deploy.errors import DeployError, HostError
from deploy.flow.choose import choose_runtime, runtimes
from deploy.hosts.probe import probe
from deploy.hosts.remote import run, stream, where
from deploy.hosts.ssh import HostOptions, HostSpec, Outcome, connect
from deploy.hosts.text import printable
from deploy.runtimes.base import Service

if TYPE_CHECKING:
    from fabric import Connection

BUILD_SCRIPTS = "build_*.sh"
SETUP = "setup.py"
SETUP_COMMAND = "python setup.py build_ext --inplace"
TAIL_LINES = 15
# The build files at REMOTE_DIR's root (a pattern that matches nothing stays a pattern, and no file).
_FIND = f'cd "$1" 2>/dev/null || exit 0; for f in {BUILD_SCRIPTS} {SETUP}; do [ -f "$f" ] && echo "$f"; done; true'


class BuildFailed(HostError):
    """A build command exited non-zero; ``exit_code`` is its status (the task exits with it)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def plan_build(found: Iterable[str], build_command: str = "") -> tuple[str, ...]:
    """The commands that build the project, in order; pure.

    ``build_command`` (BUILD_COMMAND) when set; else ``bash ./build_X.sh`` for every ``build_*.sh`` at
    the project's root (by name), then ``python setup.py build_ext --inplace`` when it has a
    ``setup.py``. ``()``: nothing to build.

    >>> plan_build(["setup.py", "build_monotonic_align.sh"])
    ('bash ./build_monotonic_align.sh', 'python setup.py build_ext --inplace')
    """
    if build_command.strip():
        return (build_command.strip(),)
    names = set(found)
    scripts = sorted(n for n in names if fnmatch.fnmatchcase(n, BUILD_SCRIPTS) and "/" not in n)
    commands = [f"bash {shlex.quote('./' + n)}" for n in scripts]
    if SETUP in names:
        commands.append(SETUP_COMMAND)
    return tuple(commands)


@dataclass(frozen=True)
class BuildPlan:
    """What ``fab build-ext`` runs on one host, and where."""

    host: str
    remote_dir: str
    runtime: str
    commands: tuple[str, ...]
    configured: bool  # the commands are BUILD_COMMAND's, not the project's build files
    service: Service | None = field(default=None, repr=False, compare=False)  # runs each command

    @property
    def noop(self) -> bool:
        return not self.commands

    def describe(self) -> list[str]:
        lines = [f"host      {self.host}", f"runtime   {self.runtime} (in {self.remote_dir})"]
        if self.noop:
            lines.append(f"build     nothing to build: no {BUILD_SCRIPTS} or {SETUP} at the project's root in "
                         f"{self.remote_dir}, and BUILD_COMMAND is empty")
        lines += [f"build     {printable(c)}" + ("  (BUILD_COMMAND)" if self.configured else "") for c in self.commands]
        return lines


@dataclass(frozen=True)
class BuildResult:
    """What a build did on one host: the commands it ran and how long they took."""

    host: str
    commands: tuple[str, ...]
    seconds: float

    def summary(self) -> str:
        if not self.commands:
            return f"{self.host}: nothing to build"
        return (f"{self.host}: built in {self.seconds:.0f} s ({len(self.commands)} command"
                f"{'s' if len(self.commands) != 1 else ''}); the training uses it from its next start "
                "(fab deploy-runpod --restart)")


def host_service(conn: Connection, remote_dir: str) -> tuple[str, Service]:
    """The runtime that runs ``remote_dir`` on this host (chosen from the probe as ``auto`` does) and its service."""
    facts = probe(conn, remote_dir)
    name, _ = choose_runtime("auto", facts)
    return name, runtimes()[name].service(remote_dir, facts)


def prepare_build(conn: Connection, host: str, remote_dir: str, build_command: str = "") -> BuildPlan:
    """Read which build files ``remote_dir`` has and whether a deploy made its service there (read-only),
    and plan the build.

    Raises HostError when nothing was deployed there: the build needs the project's code and its
    training environment (the image, the virtualenv), which ``fab deploy-runpod`` puts there.
    """
    name, service = host_service(conn, remote_dir)
    if not service.state(conn).exists:
        raise HostError(f"Nothing is deployed in {remote_dir} on {where(conn)} (no training {service.kind} of the "
                        f"{name} runtime); run fab deploy-runpod first: it ships the code and the training "
                        "environment the build runs in.")
    result = run(conn, ["sh", "-c", _FIND, "find", remote_dir], "Looking for the project's build files", warn=True)
    found = {line.strip() for line in result.stdout.splitlines() if line.strip()}
    return BuildPlan(host=host, remote_dir=remote_dir, runtime=name, commands=plan_build(found, build_command),
                     configured=bool(build_command.strip()), service=service)


class _Tail:
    """A writer that passes text on and keeps its last lines (for the sentence when a command fails)."""

    def __init__(self, out: TextIO, keep: int = TAIL_LINES) -> None:
        self.out, self.lines = out, deque[str](maxlen=keep)

    def write(self, text: str) -> int:
        self.lines.extend(line for line in text.splitlines() if line.strip())
        self.out.write(text)
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def run_build(conn: Connection, plan: BuildPlan, out: TextIO) -> BuildResult:
    """Run the plan's commands in turn where the training runs, their output printed to ``out`` as it comes.

    Each command is announced (``+ command``) before it runs. Raises :class:`BuildFailed` at the first
    that exits non-zero: its name, its exit code, where, and its last lines.
    """
    service = plan.service
    if service is None:
        raise HostError(f"The build plan for {plan.host} names no service to run it; make it with prepare_build.")
    started = time.monotonic()
    for command in plan.commands:
        out.write(f"+ {printable(command)}\n")
        out.flush()
        tail = _Tail(out)
        code = stream(conn, service.shell_command(command), tail)
        if code != 0:
            last = "\n".join(f"  {line}" for line in tail.lines) or "  (no output)"
            raise BuildFailed(f"`{printable(command)}` exited {code} on {where(conn)} in {plan.remote_dir} "
                              f"({plan.runtime}); its last lines:\n{last}", exit_code=code if 0 < code < 256 else 1)
    return BuildResult(host=plan.host, commands=plan.commands, seconds=time.monotonic() - started)


def build_on_hosts(specs: Sequence[HostSpec], options: HostOptions, remote_dir: str, build_command: str, out: TextIO,
                   dry_run: bool = False, unreachable: Mapping[str, DeployError] | None = None) -> list[Outcome]:
    """Plan and run the build on each host in turn (each build's output streams to ``out`` as it comes, so
    hosts never interleave), and collect every host's outcome before any failure is raised (fabric Group style).

    ``unreachable``: hosts (by ``str(spec)``) the reach check found dead, with their sentence; ``dry_run``:
    print the plans only.
    """
    outcomes = []
    for spec in specs:
        dead = (unreachable or {}).get(str(spec))
        if dead is not None:
            outcomes.append(Outcome(spec, error=dead))
            continue
        try:
            with connect(spec, options) as conn:
                plan = prepare_build(conn, str(spec), spec.workdir(remote_dir), build_command)
                out.write("\n".join(plan.describe()) + "\n")
                out.flush()
                result = None if dry_run else run_build(conn, plan, out)
        except DeployError as exc:
            outcomes.append(Outcome(spec, error=exc))
            continue
        outcomes.append(Outcome(spec, result=result))
        if result is not None:
            out.write(result.summary() + "\n")
            out.flush()
    return outcomes
