"""`fab train`: a managed run on RunPod pods = a pod up + the deploy + a watcher that keeps it going.

``fab train`` plans (``--dry-run`` prints the GPU fallback list with prices, the guardrails and what
happens on a lost pod or an exit, and stops), brings the first pod up, deploys and watches until the
run is done. ``fab train.watch RUN`` attaches a watcher to a run whose watcher was stopped or lost
(state is in the bucket). Ctrl-C detaches: the pod keeps running and the message says how to attach
again or take the pod down. SIGTERM and SIGHUP (``systemctl stop``, an SSH session that drops) detach
the same way.

On an always-on machine, keep the watcher out of any terminal's life: ``nohup fab train > train.log
2>&1 &``, a tmux session, or a systemd unit whose ``ExecStart`` is ``fab train.watch RUN`` with
``Restart=on-failure`` (a restarted watcher resumes from the state in the bucket).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from invoke import Collection, task
from invoke.exceptions import Exit

from tasks._boundary import DRY_RUN_HELP, ENV_FILE_HELP, boundary, settings_from_flags
from tasks._flags import number

TUNING_HELP = {
    "results": "Folder the finished run's lightning_logs come back to (default: the current folder).",
    "timeout": "Seconds a new pod may take to show its public SSH port (default 900; image pulls are slow).",
    "api_every": "Seconds between looks at the pod through RunPod's API (default 5).",
    "ssh_every": "Seconds between looks at the run over SSH (default 30).",
    "env_file": ENV_FILE_HELP,
}


def _say(line: str) -> None:
    print(line, flush=True)


def _tuning(results, timeout, api_every, ssh_every) -> dict:
    return {"results": Path(results or "."), "ssh_timeout": number(900 if timeout is None else timeout, "--timeout",
                                                                   minimum=1),
            "api_every": number(5 if api_every is None else api_every, "--api-every", minimum=0.5),
            "ssh_every": number(30 if ssh_every is None else ssh_every, "--ssh-every", minimum=1)}


def _detach(signum, frame) -> None:
    raise KeyboardInterrupt  # the watcher detaches as on Ctrl-C: state saved, a note in the ledger


def _watch(watcher) -> None:
    """Run the watcher; say what still bills whichever way it stops; exit non-zero when pods may bill."""
    from deploy.watch.managed import detached_message, exit_code, final_message

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _detach)
    try:
        final = watcher.run()
    except KeyboardInterrupt:
        try:
            print(f"\n{detached_message(watcher.state)}", flush=True)
        except OSError:  # no terminal any more
            pass
        return
    print(final_message(final), flush=True)
    sys.stdout.flush()
    code = exit_code(final)
    if code:
        raise Exit(code=code)


def _plan(settings, tuning):
    from deploy.watch.managed import plan_train

    return plan_train(settings, api_every=tuning.pop("api_every"), ssh_every=tuning.pop("ssh_every"),
                      ssh_timeout=tuning.pop("ssh_timeout"))


FROM_RUN_HELP = ("Continue from another run's newest checkpoint (a new run otherwise starts fresh when the "
                 "prefix holds only other runs' checkpoints); default FROM_RUN.")


@task(name="run", default=True, auto_shortflags=False,
      help={"dry_run": DRY_RUN_HELP, "from_run": FROM_RUN_HELP, **TUNING_HELP})
@boundary
def train(c, dry_run=False, results=None, timeout=None, api_every=None, ssh_every=None, env_file=None,
          from_run=None):
    """Train on a RunPod pod and keep the run going: lost pods replaced, failures restarted, limits kept."""
    from deploy.storage import Storage
    from deploy.watch.managed import REQUIRED, start

    tuning = _tuning(results, timeout, api_every, ssh_every)
    settings = settings_from_flags(env_file=env_file, FROM_RUN=from_run)
    plan = _plan(settings, tuning)
    print("\n".join(plan.lines()), flush=True)
    if dry_run:
        print("Dry run: no pod was created.")
        return
    settings.require(*REQUIRED)
    watcher = start(settings, Path.cwd(), Storage.from_settings(settings), plan, log=_say, **tuning)
    print(f"run       {watcher.state.run_id} (fab train.watch {watcher.state.run_id} attaches to it again)", flush=True)
    _watch(watcher)


@task(auto_shortflags=False, positional=["run"], help={"run": "The run id (fab runs lists them).", **TUNING_HELP})
@boundary
def watch(c, run=None, results=None, timeout=None, api_every=None, ssh_every=None, env_file=None):
    """Attach a watcher to a managed run (after Ctrl-C, a lost laptop, or on an always-on machine)."""
    from deploy.errors import ConfigError
    from deploy.storage import Storage
    from deploy.watch.managed import REQUIRED, attach, run_id_of

    if not run:
        raise ConfigError("Name the run to watch: fab train.watch RUN (fab runs lists them).")
    run_id = run_id_of(run)
    tuning = _tuning(results, timeout, api_every, ssh_every)
    settings = settings_from_flags(env_file=env_file)
    settings.require(*REQUIRED)
    plan = _plan(settings, tuning)
    watcher = attach(settings, Path.cwd(), Storage.from_settings(settings), run_id, plan, log=_say, **tuning)
    state = watcher.state
    print(f"run       {state.run_id}: {state.phase}, pod {state.pod_id or 'none'} {state.host}".rstrip(), flush=True)
    _watch(watcher)


ns = Collection("train")
ns.add_task(train, default=True)
ns.add_task(watch)
