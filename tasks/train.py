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

from tasks._boundary import BUCKET_FLAGS, DRY_RUN_HELP, RUN_HELP, boundary, settings_from_flags
from tasks._flags import duration, duration_help, run_arg
from tasks._reach import reach, unchecked

TUNING_HELP = {
    "results": "Folder the finished run's lightning_logs come back to (default: the current folder).",
    "timeout": duration_help("How long a new pod may take to show its public SSH port (image pulls are slow)", "15m"),
    "api_every": duration_help("How often the watcher looks at the pod through RunPod's API", "5s"),
    "ssh_every": duration_help("How often the watcher looks at the run over SSH", "30s"),
    **BUCKET_FLAGS,
}


def _say(line: str) -> None:
    print(line, flush=True)


def _tuning(results, timeout, api_every, ssh_every) -> dict:
    # None defaults: invoke would cast a bad value with a traceback
    return {"results": Path(results or "."),
            "ssh_timeout": duration("15m" if timeout is None else timeout, "--timeout", minimum=1),
            "api_every": duration("5s" if api_every is None else api_every, "--api-every", minimum=0.5),
            "ssh_every": duration("30s" if ssh_every is None else ssh_every, "--ssh-every", minimum=1)}


def _checked(settings, dry_run: bool):
    """RunPod's API and the bucket, asked at once before anything else (REQUIRED names every missing key)."""
    from deploy.pods.api import PodApi
    from deploy.pods.plan import read_public_key
    from deploy.storage import Storage
    from deploy.watch.managed import REQUIRED

    settings.require(*REQUIRED)
    read_public_key(settings.pod_public_key, settings.runpod_ssh_key)  # a local check, before the network
    api = PodApi.from_settings(settings)
    storage = Storage.from_settings(settings, interactive=True)
    return api, reach(settings, storage=storage, api=api, collect=dry_run)


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


def _plan(settings, tuning, api=None):
    from deploy.watch.managed import plan_train

    return plan_train(settings, api, api_every=tuning.pop("api_every"), ssh_every=tuning.pop("ssh_every"),
                      ssh_timeout=tuning.pop("ssh_timeout"))


FROM_RUN_HELP = ("Continue from another run's newest checkpoint (a new run otherwise starts fresh when the "
                 "prefix holds only other runs' checkpoints); default FROM_RUN.")


@task(name="run", default=True, auto_shortflags=False,
      help={"run": f"{RUN_HELP} The run to train (default: RUN_ID, else the newest unfinished run, else a new one).",
            "dry_run": DRY_RUN_HELP, "from_run": FROM_RUN_HELP, **TUNING_HELP})
@boundary
def train(c, run=None, dry_run=False, results=None, timeout=None, api_every=None, ssh_every=None, env_file=None,
          from_run=None, bucket=None, prefix=None):
    """Train on a RunPod pod and keep the run going: lost pods replaced, failures restarted, limits kept."""
    from deploy.storage import Storage
    from deploy.watch.managed import start

    tuning = _tuning(results, timeout, api_every, ssh_every)
    run = None if run is None else run_arg(run)
    settings = settings_from_flags(env_file=env_file, FROM_RUN=from_run, RUN_ID=run, S3_BUCKET=bucket,
                                   S3_PREFIX=prefix)
    api, gaps = _checked(settings, dry_run)
    if any(g.kind == "api" for g in gaps):  # no GPU types and prices: no plan to print
        print(f"pod       the first of {settings.pod_gpu_types} with capacity: prices not checked")
        unchecked(gaps)
    plan = _plan(settings, tuning, api)
    print("\n".join(plan.lines()), flush=True)
    if dry_run:
        unchecked(gaps)
        print("Dry run: no pod was created.")
        return
    # The watcher's own bucket client is patient: a minute of S3 trouble mid-run must not stop it.
    watcher = start(settings, Path.cwd(), Storage.from_settings(settings), plan, log=_say, **tuning)
    print(f"run       {watcher.state.run_id} (fab train.watch {watcher.state.run_id} attaches to it again)", flush=True)
    _watch(watcher)


@task(auto_shortflags=False, positional=["run"],
      help={"run": f"{RUN_HELP} Give it as RUN or --run RUN.",
            "dry_run": "Show what the watcher would do next, from the state the last one saved and one look at the "
                       "pods and the run; change nothing.", **TUNING_HELP})
@boundary
def watch(c, run=None, dry_run=False, results=None, timeout=None, api_every=None, ssh_every=None, env_file=None,
          bucket=None, prefix=None):
    """Attach a watcher to a managed run (after Ctrl-C, a lost laptop, or on an always-on machine)."""
    from deploy.errors import ConfigError
    from deploy.storage import Storage
    from deploy.watch.managed import attach, preview

    if not run:
        raise ConfigError("Name the run to watch: fab train.watch RUN (fab runs lists them).")
    run_id = run_arg(run)
    tuning = _tuning(results, timeout, api_every, ssh_every)
    settings = settings_from_flags(env_file=env_file, S3_BUCKET=bucket, S3_PREFIX=prefix)
    api, gaps = _checked(settings, dry_run)
    if gaps:
        print(f"run       {run_id}: its saved state and what the watcher would do next: not checked")
        unchecked(gaps)
    plan = _plan(settings, tuning, api)
    if dry_run:
        print("\n".join(preview(settings, Path.cwd(), Storage.from_settings(settings, interactive=True), run_id, plan,
                                **tuning)))
        print("Dry run: nothing was created, ended or written.")
        return
    watcher = attach(settings, Path.cwd(), Storage.from_settings(settings), run_id, plan, log=_say, **tuning)
    state = watcher.state
    print(f"run       {state.run_id}: {state.phase}, pod {state.pod_id or 'none'} {state.host}".rstrip(), flush=True)
    _watch(watcher)


ns = Collection("train")
ns.add_task(train, default=True)
ns.add_task(watch)
