"""What every runtime shares, once: the step, the plan and its code-sync part, the service it runs, one look
at a run, the result, the wait.

A runtime is a strategy below the deploy flow (deploy.flow): it reads what a host has (``gather``,
read-only), decides the steps (``plan``, pure: the unit tests check it), carries each step out (its
``handlers``, one callable per step name), names the service it runs (``service``: state, logs,
start, stop, a :class:`Look` at the run for the watcher and ``fab status``, and a command line that
runs where the training runs for ``fab build-ext``) and says what it can do (``multi_node``,
``needs_image``). The flow calls only the :class:`Runtime` protocol, so a new runtime (compose, native,
later others) adds a module here and changes nothing above it but the chooser.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TYPE_CHECKING

from deploy.errors import HostError
from deploy.hosts.envfile import EnvShipment, ship_env
from deploy.hosts.probe import HostFacts
from deploy.hosts.remote import cause, run, where
from deploy.hosts.ssh import HostSpec
from deploy.ledger.model import HEARTBEAT_FILE

if TYPE_CHECKING:
    from fabric import Connection

STARTED_MARKER = "entrypoint: running"
"""The entrypoint prints this once it launches training: the end of a start, for every runtime."""

RELOAD = "reload"
"""A running training takes new project code warm (deploy.training.reload); a start when it cannot."""
START_STEPS = ("start", "restart", RELOAD)
RELOAD_TIMEOUT = 600  # seconds for the stop at a step, the resume and the new launch (a stop alone may take 120)
Log = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """One change a plan makes on a host: its name (a handler's key) and what it does, for people."""

    name: str
    detail: str


@dataclass(frozen=True)
class CodeSync:
    """The code-sync part of every runtime's plan: which files to send, which to remove, and how.

    Planned by :func:`deploy.runtimes.code.sync.plan_sync` (pure) and carried out by its ``send_files``.
    """

    send: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()
    method: str = "sftp"  # rsync when both ends have it
    send_bytes: int = 0
    unchanged: int = 0

    @property
    def noop(self) -> bool:
        return not (self.send or self.delete)

    def describe(self) -> str:
        """The ``sync-code`` step's line."""
        return (f"{len(self.send)} files ({self.send_bytes / 1e6:.1f} MB) to send by {self.method}, "
                f"{len(self.delete)} to remove, {self.unchanged} unchanged")


@dataclass(frozen=True)
class ServiceState:
    """The training service as the host reports it (a container, a supervised process)."""

    exists: bool
    running: bool = False
    status: str = "absent"
    started_at: str = ""
    image_id: str = ""
    restarts: int = 0
    container: str = ""


@dataclass(frozen=True)
class Progress:
    """One look at a starting service: its state, whether this start's output said it started, or gave up."""

    state: ServiceState
    started: bool
    failed: bool


@dataclass(frozen=True)
class Look:
    """One look at a run on its host, in one round trip (:meth:`Service.look`), the same for every runtime.

    ``training`` says what the training does in the words every runtime shares (the native
    supervisor's): starting, running, restarting, orphaned, stopping, exited (with 0: finished),
    stopped, failed, dead, absent; the managed-run watcher decides on it (deploy.watch.decide).
    """

    service: ServiceState
    training: str
    heartbeat: str = ""  # REMOTE_DIR/lightning_logs/heartbeat.json as the host has it ("" when there is none)
    clock: float | None = None  # the host's clock at the look (epoch seconds): a heartbeat's age by the host
    gpu_percent: float | None = None  # the GPUs' mean utilisation; None without nvidia-smi

    @property
    def step(self) -> int | None:
        """The global step the heartbeat names; None without one."""
        try:
            data = json.loads(self.heartbeat or "null")
        except ValueError:
            return None
        return data["step"] if isinstance(data, dict) and isinstance(data.get("step"), int) else None


@dataclass(frozen=True)
class HostRun:
    """What the operator asked for on one host, before a runtime turns it into its own desired state."""

    spec: HostSpec
    remote_dir: str
    env: EnvShipment
    image_ref: str = ""
    image_id: str = ""
    image_bytes: int = 0
    image_problem: str | None = None  # the image is missing from the bucket: a problem where one is needed
    restart: bool = False
    native_python: str = "python3"
    data_dir: str = ""  # where the dataset lands (DATA_DIR); training sees it at data/ in every runtime
    package_index: str = ""  # PACKAGE_INDEX: "never" installs only from the bucket's wheel store (native)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a runtime will do on one host. ``describe()`` is what ``--dry-run`` prints.

    Runtimes subclass it with their own facts (:meth:`header`) and name what an empty plan means
    (:attr:`idle`); steps, problems and the printed form are the same for every runtime.
    """

    spec: HostSpec
    steps: tuple[Step, ...]
    problems: tuple[str, ...] = ()
    facts: HostFacts = field(default_factory=HostFacts)
    runtime: ClassVar[str] = ""
    reason: str = ""  # why this runtime was chosen for the host
    idle: ClassVar[str] = "none"

    @property
    def noop(self) -> bool:
        return not self.steps

    def needs(self, name: str) -> bool:
        return any(s.name == name for s in self.steps)

    def header(self) -> list[str]:
        """The runtime's own lines after ``host`` and ``runtime`` (image, code, interpreter ...)."""
        return []

    def env_kept(self) -> list[str]:
        """The ``.env`` keys that stay on the laptop (names only), when the plan ships an env file with any."""
        env = getattr(getattr(self, "desired", None), "env", None)  # every runtime's desired state has one
        kept = getattr(env, "left_behind", ())
        return [f"env kept  {', '.join(kept)} (not shipped; SHIP_ENV_INCLUDE adds keys)"] if kept else []

    def describe(self) -> list[str]:
        lines = [f"host      {self.spec}"]
        if self.reason:
            lines.append(f"runtime   {self.runtime} ({self.reason})")
        lines += self.header()
        lines += self.env_kept()
        lines += [f"problem   {p}" for p in self.problems]
        if self.noop and not self.problems:
            lines.append(f"changes   none: {self.idle}")
        lines += [f"change    {s.name}: {s.detail}" for s in self.steps]
        return lines


@dataclass(frozen=True)
class DeployResult:
    """What a deploy did on one host: the steps, the service after them, how long it took."""

    spec: HostSpec
    done: tuple[str, ...]
    service: ServiceState
    seconds: float
    follow: str
    runtime: str  # the runtime that deployed it (compose, native)


class Service(Protocol):
    """The training service a runtime runs in REMOTE_DIR; ``status``, ``logs`` and ``stop`` use only this."""

    kind: str  # what the state describes: "container", "supervisor"

    def state(self, conn: Connection) -> ServiceState: ...

    def logs(self, conn: Connection, tail: int = 100) -> str: ...

    def logs_command(self, tail: int = 100, follow: bool = False) -> str: ...

    def shell_command(self, script: str) -> str:
        """A shell line that runs the ``sh`` script ``script`` where the training runs: REMOTE_DIR its working
        directory, the training's python and tools first on PATH (``fab build-ext`` builds there)."""

    def start(self, conn: Connection, recreate: bool = False) -> int:
        """Start (``recreate``: restart) the service; return where this start's output begins."""

    def progress(self, conn: Connection, since: int) -> Progress: ...

    def stop(self, conn: Connection, timeout: int = 120) -> None: ...

    def look(self, conn: Connection) -> Look:
        """The service, the training's heartbeat and the GPUs' use in one round trip (:func:`look_at`)."""

    def backstop_args(self) -> list[str]:
        """How deploy/remote/backstop.py stops this training from the host itself and records its end
        (``--python``, ``--supervisor``, ``--app``); ``[]`` when it cannot."""

    def reload_command(self, *options: str) -> str:
        """A shell line that runs ``python -m deploy.training.reload OPTIONS`` beside the running entrypoint (on the
        host, or in its container), in REMOTE_DIR."""


class ImageSource(Protocol):
    """Where a runtime that needs the training image gets it (the bucket's layer store:
    deploy.flow.sources.BucketImages); the flow hands one to every runtime."""

    def load_on_host(self, conn: Connection, ref: str) -> str:
        """Load ``ref`` on the host behind ``conn``; return the loaded image id."""


StepHandler = Callable[[Any, Any, Log], "int | None"]
"""``handler(conn, plan, log)``; a start step returns where its output begins (see :meth:`Service.start`)."""


class Runtime(Protocol):
    """A way to run training on a host: compose (Docker), native (a supervised process) ...

    What it can do is said by attributes, so the flow asks them instead of testing names.
    """

    name: str
    multi_node: bool  # can run one training across several hosts (NUM_NODES > 1: deploy.flow.group)
    needs_image: bool  # runs the training image, which must then be in the bucket (deploy.flow.sources)

    def desire(self, run: HostRun) -> Any:
        """The runtime's desired state for one host (computed on the operator's machine)."""

    def gather(self, conn: Connection, desired: Any, facts: HostFacts) -> Any:
        """Read what the host has for this runtime; changes nothing."""

    def plan(self, spec: HostSpec, desired: Any, state: Any, facts: HostFacts) -> Plan:
        """Decide the steps; pure."""

    @property
    def handlers(self) -> Mapping[str, StepHandler]:
        """One callable per step name the runtime's plans use."""

    def service(self, remote_dir: str, facts: HostFacts) -> Service:
        """The service this runtime runs in ``remote_dir``."""


_CLOCK, _BEAT, _GPU = "@@gpu-deploy-clock", "@@gpu-deploy-heartbeat", "@@gpu-deploy-gpu"
GPU_QUERY = "nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits"
ReadService = Callable[[str], "tuple[ServiceState, str]"]
"""A runtime's reading of its own part of a look: the service's state and the training word (see :class:`Look`)."""


def look_command(own: str, remote_dir: str) -> str:
    """One shell line: a runtime's own state command, then the host's clock, the heartbeat file and each GPU's use.

    Marker lines separate the parts, so a part that prints nothing (no heartbeat yet, no nvidia-smi)
    is still told apart; ``true`` at the end: a missing tool is no failure.
    """
    beat = shlex.quote(posixpath.join(remote_dir, HEARTBEAT_FILE))
    return (f"{own}; echo {_CLOCK}; date -u +%s.%N; echo {_BEAT}; cat {beat} 2>/dev/null; echo; "
            f"echo {_GPU}; {GPU_QUERY} 2>/dev/null; true")


def parse_look(output: str, read: ReadService) -> Look:
    """:func:`look_command`'s output as a :class:`Look`; ``read`` reads the runtime's own part.

    Raises HostError when the host did not answer the look (its output has no heartbeat marker).
    """
    head, found, rest = output.partition(_BEAT)
    if not found:
        raise HostError("The host did not answer the look at the run.")
    own, _, clock_text = head.partition(_CLOCK)
    beat, _, gpus = rest.partition(_GPU)
    try:
        clock: float | None = float(clock_text.strip())
    except ValueError:
        clock = None
    busy = []
    for line in gpus.splitlines():
        try:
            busy.append(float(line.strip()))
        except ValueError:
            continue
    service, training = read(own)
    return Look(service=service, training=training, heartbeat=beat.strip(), clock=clock,
                gpu_percent=sum(busy) / len(busy) if busy else None)


def look_at(conn: Connection, own: str, remote_dir: str, read: ReadService) -> Look:
    """One look at the run in ``remote_dir`` in one round trip (the :meth:`Service.look` of every runtime)."""
    result = run(conn, ["sh", "-c", look_command(own, remote_dir)], "Looking at the run", warn=True)
    if _BEAT not in result.stdout:
        raise HostError(f"Looking at the run failed on {where(conn)}: "
                        f"{cause(result.stderr) or 'exit ' + str(result.exited)}")
    return parse_look(result.stdout, read)


def wait_for_training(conn: Connection, service: Service, since: int, timeout: float, interval: float = 1.0) -> ServiceState:
    """Poll until the service runs and this start's output says training launched, or fail with its logs.

    The host offers nothing to wait on over SSH, so this polls, once a second, for at most ``timeout``.
    """
    deadline = time.monotonic() + timeout
    progress = service.progress(conn, since)
    while not progress.started and not progress.failed and time.monotonic() < deadline:
        time.sleep(interval)
        progress = service.progress(conn, since)
    if progress.started:
        return progress.state
    state = progress.state
    tail = service.logs(conn, tail=15) if state.exists else ""
    raise HostError(f"Training did not start within {timeout:.0f} s ({service.kind} {state.status}, "
                    f"{state.restarts} restarts); last log lines:\n{tail}")


@dataclass(frozen=True)
class Reloaded:
    """What ``deploy.training.reload`` answered: the new launch's log offset, or why nothing was signalled."""

    offset: int | None
    why: str = ""


def reload_training(conn: Connection, service: Service, timeout: int = RELOAD_TIMEOUT) -> Reloaded:
    """Ask the running entrypoint to train the new code warm; ``offset`` None: it was not asked, restart it cold.

    A training that was asked and did not come back is a failure (its stop may have ended it): named, not retried.
    """
    result = run(conn, ["sh", "-c", service.reload_command("--timeout", str(int(timeout)))], "Reloading the training",
                 warn=True)
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = None
    if not isinstance(answer, dict):
        return Reloaded(None, cause(result.stderr) or cause(result.stdout) or f"exit {result.exited}")
    if answer.get("reloaded"):
        return Reloaded(int(answer.get("log_offset") or 0))
    why = str(answer.get("why") or "no reason given")
    if answer.get("signalled"):
        raise HostError(f"The training on {where(conn)} was asked to reload and {why}; see `fab logs`.")
    return Reloaded(None, why)


def warm_ahead(available: Mapping[str, Runtime], requested: str, remote_dir: str) -> dict[str, str]:
    """By runtime name, the line that has a running training's entrypoint start importing torch and Lightning now,
    in case this deploy reloads it: they import while the deploy reads the host, plans and sends the code.

    The probe starts the one for what REMOTE_DIR holds, in its own round trip (:func:`deploy.hosts.probe.probe`),
    detached: nothing waits for it, and it is harmless when the plan is not a reload (the entrypoint refuses what a
    reload would refuse and drops an unused warm process after a while: deploy.training.reload ``--prewarm``).
    Only the runtime asked for, or either with ``auto``; a service's reload line needs no probed fact.
    """
    names = [requested] if requested in available else list(available)
    return {name: available[name].service(remote_dir, HostFacts()).reload_command("--prewarm") for name in names}


def reload_or_restart(conn: Connection, service: Service, host: str, log: Log, restart: Callable[[], int],
                      reloaded: Callable[[], None]) -> int:
    """The ``reload`` step of every runtime: the running entrypoint takes the new code warm and ``reloaded()``
    records it; when it cannot, ``restart()`` (a cold start, which records itself). The new launch's log offset."""
    answer = reload_training(conn, service)
    if answer.offset is None:
        log(f"{host}: {RELOAD}: {answer.why}; restarting instead")
        return restart()
    reloaded()
    return answer.offset


def write_env(conn: Connection, plan: Any, log: Log) -> None:
    """The ``write-env`` step, the same for every runtime: REMOTE_DIR/.env, mode 0600, atomically.

    ``plan.desired`` has ``remote_dir`` and ``env`` in every runtime.
    """
    ship_env(conn, plan.desired.remote_dir, plan.desired.env)
