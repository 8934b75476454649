"""The training container's entrypoint: resume step, then the training command, with signals passed on.

    python -m deploy.training.entrypoint [options] [-- training command ...]

0. With ``RUN_ID`` set, S3 sync on and an attempt from the deploy (``.gpu-deploy/attempt.json``,
   written by the deploy flow's ``take-lease`` step), claims the run's lease (see
   :mod:`deploy.training.lease`). When a newer attempt holds the run already, it says which and on
   which host and exits 0 without training (0, so neither the native supervisor nor compose's
   ``restart: on-failure`` starts it again). Otherwise the training command gets ``RUN_ATTEMPT``
   (and ``RUN_ID``), and every write under ``checkpoints/`` and ``logs/`` from here on checks the
   lease first. A training superseded while it ran stops without writing; the entrypoint then
   says so and exits 0 too.
1. With ``ENABLE_S3_SYNC=1``, first sends the checkpoints a killed run staged but never uploaded
   (found under ``--staged-root``, default the working directory; see
   :mod:`deploy.training.recovery`). Then resolves ``CHECKPOINT`` (``s3``, an ``s3://`` URI, a local
   path, or empty; see :mod:`deploy.training.resume`) to a verified local file and says what it
   chose; for ``s3`` the newest recovered local file wins over an older object in the bucket, and
   with ``RUN_ID`` only this run's checkpoints (plus ``FROM_RUN``'s and unlabelled ones) count.
2. Runs the training command (after ``--``, else ``TRAIN_COMMAND``, else the demo:
   ``python -m deploy.training.demo fit``). For a
   LightningCLI ``fit`` it appends ``--ckpt_path=<file>`` and, with ``ENABLE_S3_SYNC=1``,
   ``--trainer.callbacks+=`` for the S3 callbacks (unless the command names them already); any
   command also gets ``RESUME_CHECKPOINT=<file>`` in its environment.
3. Passes SIGTERM and SIGINT on to the command and waits for it, so Lightning can stop at the next
   batch and the callbacks can flush pending uploads; exits with the command's exit code (128 + the
   signal when a stopped run exited 0: it did not finish). A stop while no training runs (the lease,
   the recovery, the resume's download) ends the entrypoint at once with 128 + the signal, in a
   container too, where it is process 1.

It runs the same way after a crash or preemption (compose's ``restart: on-failure``, the native
supervisor's restart), so the run continues from the last uploaded step.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from deploy.errors import DeployError
from deploy.settings import Settings, load_settings
from deploy.storage import Storage
from deploy.training.journal import RunFolders, scan_run
from deploy.training.lease import (ATTEMPT_ENV, ATTEMPT_FILE, RUN_ENV, Claim, Lease, claim, fence, read_attempt,
                                   read_lease)
from deploy.training.ledger import RUN_HOST_ENV, TrainingLedger, record_in_background
from deploy.training.recovery import LocalCheckpoint, recover_staged
from deploy.training.reload import PREWARM_HOLD, EntrypointState
from deploy.training.resume import STOP_RECORD_ENV, ResumePlan, StopRecord, resolve_checkpoint
from deploy.training.warmstart import Reloads, Warm, standby_after

DEMO_COMMAND = (sys.executable, "-m", "deploy.training.demo", "fit")
SYNC_CALLBACKS = ("deploy.training.callbacks.S3CheckpointSync", "deploy.training.callbacks.S3LogSync")
HEARTBEAT_CALLBACK = "deploy.training.heartbeat.Heartbeat"  # attached for a deploy's run (RUN_ID set)
RESUME_ENV = "RESUME_CHECKPOINT"
RELOAD_POLL = 0.05  # seconds between looks for a reload request while the training runs
DEFAULT_RESUME_DIR = ".resume"
STOP_RECORD = "stopped.json"  # in the resume folder: a training's stop checkpoint (deploy.training.resume.StopRecord)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal while no training runs: the lease, the recovered uploads, the resume's download.

    The entrypoint is process 1 in a compose container, and process 1 ignores a signal it has no handler for: without
    this, ``docker stop`` (``fab stop``, a redeploy, a multi-node group restarting after a lost node) waited out the
    whole grace period, 120 s, and ended it with SIGKILL. A BaseException, so that no ``except Exception`` on the way
    (a retried S3 call) swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stopped(signum: int, _frame: object) -> None:
    for sig in STOP_SIGNALS:  # a second stop while this one unwinds waits for it (the grace period still bounds it)
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


@dataclass(frozen=True)
class Launch:
    """The command to run and the environment additions, decided before anything runs."""

    command: tuple[str, ...]
    env: dict[str, str]
    resume: ResumePlan


def is_lightning_fit(command: Sequence[str]) -> bool:
    """A LightningCLI ``fit`` call: the subcommand appears as a bare word among the arguments."""
    return "fit" in command[1:]


def training_command(command: Sequence[str], settings: Settings) -> list[str]:
    """The command after ``--``, else ``TRAIN_COMMAND`` (split like a shell would), else the demo."""
    if command:
        return list(command)
    if settings.train_command:
        return shlex.split(settings.train_command)
    return list(DEMO_COMMAND)


def plan_launch(command: Sequence[str], resume: ResumePlan, settings: Settings, attach: bool = True,
                lease: Claim | None = None) -> Launch:
    """Add ``--ckpt_path`` and the sync callbacks to a LightningCLI ``fit``; other commands get env only.

    ``lease`` (claimed): the command gets ``RUN_ID`` and ``RUN_ATTEMPT``, so its uploads check the lease.
    """
    cmd = training_command(command, settings)
    env: dict[str, str] = {}
    if resume.path:
        env[RESUME_ENV] = resume.path
    if lease is not None:
        env.update({RUN_ENV: lease.run_id, ATTEMPT_ENV: str(lease.attempt)})
    if is_lightning_fit(cmd):
        if resume.path and not any(a == "--ckpt_path" or a.startswith("--ckpt_path=") for a in cmd):
            cmd.append(f"--ckpt_path={resume.path}")
        if attach and settings.enable_s3_sync:
            for callback in SYNC_CALLBACKS:
                if not any(callback in a for a in cmd):
                    cmd.append(f"--trainer.callbacks+={callback}")
        if attach and settings.run_id and not any(HEARTBEAT_CALLBACK in a for a in cmd):
            cmd.append(f"--trainer.callbacks+={HEARTBEAT_CALLBACK}")
        if settings.num_nodes > 1:  # a multi-node group: deploy set NODE_RANK, MASTER_ADDR and MASTER_PORT
            group = {"num_nodes": str(settings.num_nodes), "devices": settings.devices or "auto", "strategy": "ddp"}
            for name, value in group.items():
                if not any(a.startswith(f"--trainer.{name}") for a in cmd):
                    cmd.append(f"--trainer.{name}={value}")
    return Launch(tuple(cmd), env, resume)


def run(command: Sequence[str], extra_env: dict[str, str], warm: Warm | None = None,
        reloads: Reloads | None = None) -> tuple[int, bool]:
    """Run ``command`` (from ``warm`` when it can); SIGTERM/SIGINT/SIGHUP received meanwhile go to it.

    Returns its exit code and whether it ended for a reload: a reload request (``reloads``) stops it with
    SIGTERM, as ``fab stop`` does, and has ``warm`` import ahead for the next start meanwhile. With ``reloads``,
    ``warm`` starts the next start's process once the training has run :func:`standby_after` seconds, and keeps it.
    """
    env = {**os.environ, **extra_env}
    child = (warm.take(command, env) if warm is not None else None) or subprocess.Popen(list(command), env=env)
    wait = standby_after()
    standby = float("inf") if wait is None else time.monotonic() + wait
    received: list[int] = []
    reloading = False

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        while True:
            try:
                code = child.wait(timeout=None if reloads is None else RELOAD_POLL)
                break
            except subprocess.TimeoutExpired:
                pass
            if reloads is not None and reloads.take() and not reloading and not received:
                reloading = True
                if warm is not None:
                    warm.prepare()
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            if reloads is not None and warm is not None and not reloading:
                if reloads.take_ahead() and not received:
                    warm.prepare(hold=PREWARM_HOLD)
                elif not received and time.monotonic() >= standby:
                    warm.prepare(standby=True)  # the next reload's process (one started ahead is kept now)
                    standby = float("inf")
                warm.expire()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if reloading and not received:
        return code, True
    if code < 0:
        return 128 - code, False  # -15 (killed by SIGTERM) -> 143, like a shell
    if code == 0 and received:
        # Lightning exits 0 after a SIGTERM, but the run is not finished: say so, so that
        # `restart: on-failure` brings it back after a daemon restart or a reboot.
        return 128 + received[0], False
    return code, False


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    args = list(argv)
    command: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, command = args[:at], args[at + 1:]
    parser = argparse.ArgumentParser(prog="python -m deploy.training.entrypoint",
                                     description="Resume step, then the training command (after --).")
    parser.add_argument("--resume-dir", default=os.environ.get("RESUME_DIR", DEFAULT_RESUME_DIR),
                        help="where a checkpoint from S3 is downloaded (default: .resume)")
    parser.add_argument("--no-attach", action="store_true",
                        help="do not add the S3 callbacks to a LightningCLI command")
    parser.add_argument("--staged-root", action="append", default=None, metavar="DIR",
                        help="where to look for checkpoints a killed run left unsent (repeatable; "
                             "default: the working directory)")
    parser.add_argument("--attempt-file", default=ATTEMPT_FILE,
                        help=f"the run's attempt the deploy wrote (default: {ATTEMPT_FILE})")
    return parser.parse_args(args), command


def take_lease(settings: Settings, storage: Callable[[], Storage], attempt_file: Path,
               host: str) -> Claim | None:
    """Claim the run's lease with the deploy's attempt; None (nothing claimed) without RUN_ID, S3 sync or
    an attempt file for this run (a training started by hand runs as before)."""
    if not (settings.run_id and settings.enable_s3_sync):
        return None
    found = read_attempt(attempt_file)
    if found is None:
        return None
    run_id, attempt = found
    if run_id != settings.run_id:
        print(f"entrypoint: {attempt_file} is for run {run_id}, not RUN_ID={settings.run_id}; no lease claimed",
              flush=True)
        return None
    return claim(storage(), run_id, attempt, host)


def superseded_since(storage: Callable[[], Storage], lease: Claim) -> Lease | None:
    """The lease, when a newer attempt claimed the run while this training ran; None otherwise or unreadable."""
    try:
        now = read_lease(storage(), lease.run_id)
    except DeployError:
        return None
    return now if now is not None and now.supersedes(lease.attempt) else None


def recover(settings: Settings, storage: Callable[[], Storage], roots: Sequence[str],
            resume_dir: Path, folders: RunFolders | None = None) -> LocalCheckpoint | None:
    """Send what a killed run left staged (S3 sync on only); return the newest verified local file."""
    if not settings.enable_s3_sync:
        return None
    recovery = recover_staged(storage, roots, resume_dir, folders)
    if recovery.uploaded or recovery.failed or recovery.unusable:
        print(f"entrypoint: {recovery.message}", flush=True)
    return recovery.newest


def prepare(settings: Settings, storage: Callable[[], Storage], options: argparse.Namespace,
            host: str, stopped: StopRecord | None = None) -> tuple[Claim | None, ResumePlan] | int:
    """The lease, the staged uploads and the checkpoint to resume from (``stopped``: a reload's stop checkpoint);
    an exit code when there is nothing to run."""
    try:
        lease = take_lease(settings, storage, Path(options.attempt_file), host)
        if lease is not None and lease.superseded:
            print(f"entrypoint: {lease.message}", flush=True)
            return 0  # not a failure: nothing may restart a superseded training
        if lease is not None:
            print(f"entrypoint: {lease.message}", flush=True)
            fence(storage(), lease.run_id, lease.attempt)  # the recovery's uploads check the lease too
        resume_dir = Path(options.resume_dir)
        roots = options.staged_root or ["."]
        folders = scan_run(roots)  # one walk: the staging folders and the folders holding checkpoints
        local = recover(settings, storage, roots, resume_dir, folders)
        plan = resolve_checkpoint(settings.checkpoint, storage, resume_dir, local=local, run_id=settings.run_id,
                                  from_run=settings.from_run, near=folders.checkpoints, stopped=stopped)
    except DeployError as exc:
        print(f"entrypoint: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"entrypoint: {plan.message}", flush=True)
    return lease, plan


def train_once(settings: Settings, storage: Callable[[], Storage], options: argparse.Namespace,
               command: Sequence[str], session: Session) -> tuple[int, bool]:
    """One training: prepare, launch (warm when it can), wait. Returns the exit code and whether to train again."""
    session.state.write("starting")
    stopped, session.stopped = session.stopped, None
    prepared = prepare(settings, storage, options, session.host, stopped)
    if isinstance(prepared, int):
        return prepared, False
    lease, plan = prepared
    launch = plan_launch(command, plan, settings, attach=not options.no_attach, lease=lease)
    record = Path(options.resume_dir).resolve() / STOP_RECORD  # what this training's stop saves, for a reload
    record.unlink(missing_ok=True)
    warm = " (warm: torch and Lightning imported ahead)" if session.warm.ready(launch.command) else ""
    print(f"entrypoint: running {' '.join(launch.command)}{warm}", flush=True)
    ledger = TrainingLedger.from_settings(settings)  # the run ledger (RUN_ID from deploy); None: not recorded
    record_in_background(ledger, "started", resume=os.path.basename(plan.path) if plan.path else None,
                         attempt=lease.attempt if lease is not None else None)
    session.reloads.take()  # a request before this launch is answered by it: it runs the code there is now
    try:
        session.state.launched()
        code, again = run(launch.command, {**launch.env, STOP_RECORD_ENV: str(record)}, session.warm,
                          session.reloads)
    except OSError as exc:  # the program does not exist or cannot be executed
        print(f"entrypoint: cannot run {launch.command[0]}: {exc.strerror or exc}; check TRAIN_COMMAND.",
              file=sys.stderr, flush=True)
        return 127, False
    newer = superseded_since(storage, lease) if lease is not None else None
    if newer is not None and lease is not None:
        what = (f"superseded by {newer.holder}; this training (attempt {lease.attempt}) stopped without writing "
                "to S3")
        print(f"entrypoint: {what}", flush=True)
        record_in_background(ledger, "note", what=what, superseded_by=newer.claimed, attempt=lease.attempt)
        return 0, False  # the run goes on elsewhere: nothing may restart this one
    if again:
        session.stopped = StopRecord.take(record)
        print(f"entrypoint: reloading: the training stopped (exit {code}) and starts again with the new code",
              flush=True)
        session.state.write("reloading")
        record_in_background(ledger, "note", what="reloaded with new code", code=code)
        return code, True
    record_in_background(ledger, "finished" if code == 0 else "exited", code=code)
    return code, False


@dataclass
class Session:
    """What lasts across the trainings of one entrypoint: its host name, its state file, reloads, the warm process."""

    host: str
    state: EntrypointState
    reloads: Reloads
    warm: Warm
    stopped: StopRecord | None = None  # what the stop before a reload saved: the next start resumes from it


def main(argv: Sequence[str] | None = None) -> int:
    """Resume, then train (again after each reload); a stop while no training runs ends it at once
    (:class:`Stopped`)."""
    previous = {sig: signal.signal(sig, _stopped) for sig in STOP_SIGNALS}
    try:
        return serve(argv)
    except Stopped as stop:
        print(f"entrypoint: stopped ({signal.Signals(stop.signum).name}) while no training was running", flush=True)
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(argv: Sequence[str] | None = None) -> int:
    options, command = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings()
    except DeployError as exc:
        print(f"entrypoint: {exc}", file=sys.stderr, flush=True)
        return 2
    storage = cache(lambda: Storage.from_settings(settings))
    host = os.environ.get(RUN_HOST_ENV, "") or socket.gethostname()
    session = Session(host, EntrypointState(), Reloads(), Warm(training_command(command, settings)))
    session.warm.prepare()  # torch and Lightning import while the lease, the uploads and the resume run
    if session.state.enabled:
        session.reloads.install()
    try:
        while True:
            code, again = train_once(settings, storage, options, command, session)
            if not again:
                return code
    finally:
        session.warm.close()
        session.state.write("ended")


if __name__ == "__main__":
    sys.exit(main())
