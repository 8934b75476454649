"""The run on the GPU host: deploy it, watch it, stop it, bring its results back."""

from __future__ import annotations

import json as jsonlib
import os

from invoke import Collection, task
from invoke.exceptions import Exit

from deploy.errors import ConfigError
from deploy.hosts import connect, for_each_host, require_sftp
from deploy.settings import ENV_FILE_VARIABLE
from deploy.hosts.results import plan_pull, pull, remote_path
from deploy.hosts.ssh import ssh_command
from tasks._boundary import BUCKET_FLAGS, DRY_RUN_HELP, JSON_HELP, RUN_HELP, boundary, settings_from_flags
from tasks._flags import duration, duration_help, run_arg, whole
from tasks._hosts import HOSTS_HELP, missing_hosts, on_reachable_hosts, options, raise_if_failed, targets
from tasks._reach import reach, unchecked


def _host_settings(c, hosts, env_file, bucket, prefix, run=None):
    """Settings, and the hosts named for the task, checked to answer SSH before any work (a pod from
    pods.json is found by this bucket and prefix: hence the bucket flags)."""
    settings = settings_from_flags(env_file=env_file, S3_BUCKET=bucket, S3_PREFIX=prefix)
    settings.require(also=missing_hosts(c, settings, hosts, run))
    return settings, targets(c, settings, hosts, run=run)


@task(
    auto_shortflags=False,
    iterable=["exclude"],
    help={
        "path": "Path under REMOTE_DIR to bring back (default: lightning_logs).",
        "dest": "Local folder to put it in (default: the current folder).",
        "exclude": "Glob of files to leave on the host; repeat for more (e.g. --exclude='*.ckpt').",
        "method": "auto (rsync when both ends have it, else SFTP), rsync or sftp.",
        "dry_run": DRY_RUN_HELP,
        "hosts": HOSTS_HELP,
        **BUCKET_FLAGS,
    },
)
@boundary
def sync_from_runpod(c, path="lightning_logs", dest=".", exclude=None, method="auto", dry_run=False, hosts=None,
                     env_file=None, bucket=None, prefix=None):
    """Bring a path under REMOTE_DIR back from the host, incrementally."""
    if method not in ("auto", "rsync", "sftp"):
        raise ConfigError(f"--method must be auto, rsync or sftp, got {method!r}.")
    settings, specs = _host_settings(c, hosts, env_file, bucket, prefix)
    specs = specs[:1]  # results come from the first host (rank 0)
    opts = options(settings)
    for spec in specs:  # checked here, before any connection: a bad --path never waits for a timeout
        require_sftp(spec)
        remote_path(spec.workdir(settings.remote_dir), path)
    gaps = reach(settings, hosts=specs, collect=dry_run)
    if gaps:
        print(f"would bring {path} (under REMOTE_DIR) from {specs[0]} into {dest}")
        unchecked(gaps)

    def work(spec):
        with connect(spec, opts) as conn:
            plan = plan_pull(conn, spec, spec.workdir(settings.remote_dir), path, dest, method)
            if dry_run:
                return plan
            return pull(conn, spec, opts, spec.workdir(settings.remote_dir), path, dest, exclude or (), plan=plan)

    outcomes = for_each_host(specs, work)
    for outcome in outcomes:
        if outcome.result is not None:
            print("\n".join(outcome.result.lines() + ["Dry run: nothing was copied."]) if dry_run
                  else outcome.result.summary())
    raise_if_failed(outcomes)


@task(auto_shortflags=False, help={"hosts": HOSTS_HELP, **BUCKET_FLAGS})
@boundary
def ssh(c, hosts=None, env_file=None, bucket=None, prefix=None):
    """Open an interactive shell on the host, in REMOTE_DIR (exits with the shell's own status)."""
    from deploy.hosts.session import Session, remote_shell

    settings, specs = _host_settings(c, hosts, env_file, bucket, prefix)
    spec = specs[0]
    reach(settings, hosts=[spec])
    opts = options(settings)
    with Session(ssh_command(spec, opts), remote_shell(spec, spec.workdir(settings.remote_dir)), spec,
                 opts) as session:
        code = session.run()  # a HostError (one sentence) when ssh could not connect
    if code:
        raise Exit(code=code)  # how the user left the shell: theirs to read, nothing for us to say


WAIT_HELP = duration_help("How long to wait for training to start", "300s")


@task(
    auto_shortflags=False,
    help={
        "run": f"{RUN_HELP} Deploy into this run (default: RUN_ID, else the newest unfinished run, else a new one).",
        "image": "Training image name:tag in the bucket (default: IMAGE).",
        "dataset": "Dataset to stage: a name under datasets/ in the bucket, or a local folder (default: DATASET).",
        "nodes": "Train one run across this many hosts (default: NUM_NODES); ranks follow the host order.",
        "runtime": "compose (Docker), native (a supervised process, hosts without Docker such as RunPod pods) or "
                   "auto: compose when the host has Docker and Compose (default: RUNTIME).",
        "restart": "Recreate the service even if nothing changed (it resumes from S3).",
        "from_run": "Continue from this run's newest checkpoint (fab runs lists runs; default: FROM_RUN); "
                    "otherwise a run resumes only from its own checkpoints.",
        "build": "Build the image for TRAIN_PROJECT's requirements (fab image-build) and push it first.",
        "dry_run": DRY_RUN_HELP,
        "wait": WAIT_HELP,
        "hosts": HOSTS_HELP,
        **BUCKET_FLAGS,
    }
)
@boundary
def deploy_runpod(c, run=None, image=None, dataset=None, nodes=None, runtime=None, restart=False, build=False,
                  dry_run=False, wait=None, hosts=None, env_file=None, from_run=None, bucket=None, prefix=None):
    """Deploy the training to the GPU host(s): probe, provision, ship .env, image or code, start."""
    from deploy.flow.ahead import Ahead
    from deploy.flow.choose import needs_image
    from deploy.flow.group import deploy_group
    from deploy.flow.rollout import Rollout, deploy_hosts
    from deploy.flow.sources import build_and_push, gather_sources
    from deploy.ledger.identity import resolve_run_id
    from deploy.ledger.runs import open_run
    from deploy.storage import Storage

    # None defaults: invoke would cast with a traceback
    seconds = duration("300s" if wait is None else wait, "--wait", minimum=1)
    if env_file:
        # The flag names the active env file as ENV_FILE does; the working-tree selection reads ENV_FILE,
        # so this file stays on the laptop whatever its name (deploy.runtimes.code.tree).
        os.environ[ENV_FILE_VARIABLE] = env_file
    nodes = None if nodes is None else whole(nodes, "--nodes", minimum=1)
    run = None if run is None else run_arg(run)
    settings = settings_from_flags(env_file=env_file, IMAGE=image, DATASET=dataset, NUM_NODES=nodes, RUNTIME=runtime,
                                   FROM_RUN=from_run, RUN_ID=run, S3_BUCKET=bucket, S3_PREFIX=prefix)
    # Every missing key at once, the host's included (no -H, --hosts, RUNPOD_HOST or pod of this project).
    settings.require("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET", also=missing_hosts(c, settings, hosts))
    named = hosts is not None or bool(settings.runpod_host) or hasattr(c, "host")
    specs = targets(c, settings, hosts) if named else None  # hosts named by hand: checked before the network
    for spec in specs or ():  # .env and code travel over SFTP: a local check, before any connection
        require_sftp(spec)
    # The hosts named by hand are connected and probed while the bucket's work below runs.
    ahead = Ahead.start(specs if specs and not dry_run and settings.num_nodes == 1 else (), options(settings),
                        settings.runtime, settings.remote_dir)
    try:
        storage = Storage.from_settings(settings, interactive=True)
        gaps = reach(settings, storage=storage, hosts=specs or (), collect=dry_run)
        if gaps:
            _unchecked_deploy(settings, specs, gaps)
        run_id, new = resolve_run_id(storage, settings, save=not dry_run)
        if specs is None:  # this run's pods (pods.json); names RUNPOD_HOST when there is none
            specs = targets(c, settings, hosts, run=run_id, single=settings.num_nodes == 1)
            for spec in specs:
                require_sftp(spec)
            gaps = reach(settings, hosts=specs, collect=dry_run)
            if gaps:
                _unchecked_deploy(settings, specs, gaps, run_id)
        if len(specs) > 1 and settings.num_nodes == 1:
            raise ConfigError(f"{len(specs)} hosts for run {run_id} with NUM_NODES=1 would be {len(specs)} writers of "
                              "one run's checkpoints; set NUM_NODES (--nodes) to train one run across them, or deploy "
                              "each host with its own RUN_ID.")
        if build:
            build_and_push(settings, storage, dry_run=dry_run, log=print)
        sources = gather_sources(storage, settings, dry_run=dry_run, log=print)  # says when the image is stale
        images = sources.images
        ledger, which = open_run(storage, settings, image=settings.image, image_id=sources.image_id, dry_run=dry_run,
                                 resolved=(run_id, new))
        print(which)
        rollout = Rollout.from_settings(settings, sources, run_id=ledger.run_id, restart=restart, wait=seconds,
                                        master_addr=specs[0].host)
        if settings.num_nodes > 1:
            outcomes = deploy_group(specs, rollout, settings, options(settings), storage, images, dry_run=dry_run, log=print)
            for o in outcomes:
                if o.result is not None:
                    ledger.report(o.spec, None, o.result)
        else:
            outcomes = deploy_hosts(specs, rollout, settings, options(settings), storage, images, dry_run=dry_run,
                                    log=print, report=ledger.report, ahead=ahead)
        for o in outcomes:
            if o.error is not None:
                print(f"{o.spec}: failed: {o.error}")
            elif o.result is None:
                print(f"{o.spec}: dry run, nothing changed")
            elif not o.result.done:
                what = settings.image if needs_image(o.result.runtime) else "this code"
                print(f"{o.spec}: nothing to do; the service already runs {what} with these settings.")
            else:
                print(f"{o.spec}: {', '.join(o.result.done)} in {o.result.seconds:.0f} s; training is running. "
                      f"Follow it with: {o.result.follow}")
        raise_if_failed(outcomes)
    finally:
        ahead.close()


def _unchecked_deploy(settings, specs, gaps, run_id: str | None = None) -> None:
    """A dry run of a deploy that cannot reach the bucket or a host: what it knows without them, then exit 1."""
    print(f"deploy    {settings.image} to {', '.join(map(str, specs)) if specs else 'the pods of this run'} "
          f"(runtime {settings.runtime}, {settings.num_nodes} node(s)) in {settings.remote_dir}")
    print(f"run       {run_id or settings.run_id or 'the newest unfinished run in the bucket, else a new one'}")
    print(f"dataset   {settings.dataset or 'none'}")
    unchecked(gaps)


def _optional_bucket(settings):
    """The bucket when one is configured (status and stop work without), checked with the hosts."""
    from deploy.storage import Storage

    if settings.missing("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET"):
        return None  # status still shows the host when no bucket is configured
    return Storage.from_settings(settings, interactive=True)


@task(auto_shortflags=False, help={"json": JSON_HELP, "tail": "How many log lines to show (default 10).",
                                   "hosts": HOSTS_HELP, **BUCKET_FLAGS})
@boundary
def status(c, json=False, tail=None, hosts=None, env_file=None, bucket=None, prefix=None):
    """Show the service, GPUs, last log lines and the newest checkpoint in S3."""
    from deploy.flow.status import run_status

    lines = whole(10 if tail is None else tail, "--tail")
    settings, specs = _host_settings(c, hosts, env_file, bucket, prefix)
    opts = options(settings)
    storage = _optional_bucket(settings)
    gaps = reach(settings, storage=storage, hosts=specs, collect=True)
    bucket_gap = next((g for g in gaps if g.kind == "bucket"), None)  # the hosts are shown; the bucket is the error
    storage = None if bucket_gap else storage

    def work(spec):
        with connect(spec, opts) as conn:
            return run_status(conn, str(spec), spec.workdir(settings.remote_dir), storage, tail=lines)

    outcomes = on_reachable_hosts(specs, gaps, work)  # every host that answers is shown, then the failures
    if json:
        print(jsonlib.dumps([o.result.to_dict() if o.result else {"host": str(o.spec), "error": str(o.error)}
                             for o in outcomes], indent=2, default=str))
    else:
        for outcome in outcomes:
            if outcome.result is not None:
                print("\n".join(outcome.result.describe()))
    raise_if_failed(outcomes)
    if bucket_gap:
        raise bucket_gap.error


@task(auto_shortflags=False, help={"follow": "Keep printing new lines until Ctrl-C.",
                                   "tail": "How many lines to start with (default 100).", "hosts": HOSTS_HELP,
                                   **BUCKET_FLAGS})
@boundary
def logs(c, follow=False, tail=None, hosts=None, env_file=None, bucket=None, prefix=None):
    """Print the training service's logs (cleaned of terminal escapes; a progress bar shows its last state)."""
    import sys

    from deploy.flow.status import stream_logs

    lines = whole(100 if tail is None else tail, "--tail")
    settings, specs = _host_settings(c, hosts, env_file, bucket, prefix)
    reach(settings, hosts=specs)
    opts = options(settings)
    for spec in specs:
        with connect(spec, opts) as conn:
            print(f"--- {spec}", flush=True)
            try:
                stream_logs(conn, spec.workdir(settings.remote_dir), sys.stdout, tail=lines, follow=follow)
            except KeyboardInterrupt:
                if not follow:
                    raise
                return  # Ctrl-C is how --follow ends


@task(auto_shortflags=False, help={
    "timeout": duration_help("How long pending uploads get to flush before the kill", "120s"),
    "dry_run": DRY_RUN_HELP, "hosts": HOSTS_HELP, **BUCKET_FLAGS})
@boundary
def stop(c, timeout=None, dry_run=False, hosts=None, env_file=None, bucket=None, prefix=None):
    """Stop training gracefully: SIGTERM, pending uploads flush, then the container (or native process) stops."""
    from deploy.flow.status import plan_stop, stop_run

    seconds = int(duration("120s" if timeout is None else timeout, "--timeout", minimum=1))
    settings, specs = _host_settings(c, hosts, env_file, bucket, prefix)
    opts = options(settings)
    gaps = reach(settings, hosts=specs, collect=True)  # the bucket only records the stop: best effort
    if gaps and dry_run:
        print(f"would stop the training on {', '.join(map(str, specs))} (SIGTERM, up to {seconds} s to flush)")
        unchecked(gaps)

    storage = _optional_bucket(settings)  # a stop that saved nothing names the newest checkpoint in S3

    def work(spec):
        with connect(spec, opts) as conn:
            if dry_run:
                return plan_stop(conn, spec.workdir(settings.remote_dir), seconds)
            return stop_run(conn, spec.workdir(settings.remote_dir), seconds, storage)

    outcomes = on_reachable_hosts(specs, gaps, work)  # a dead host does not keep the others training
    for o in outcomes:
        if o.error is None:
            print(f"{o.spec}: {o.result}")
    if dry_run:
        print("Dry run: nothing was stopped.")
    elif storage is not None:
        from deploy.ledger.runs import record_stops

        record_stops(storage, settings, [str(o.spec) for o in outcomes if o.error is None and o.result])
    raise_if_failed(outcomes)


@task(auto_shortflags=False, help={"dry_run": DRY_RUN_HELP, "hosts": HOSTS_HELP, **BUCKET_FLAGS})
@boundary
def build_ext(c, dry_run=False, hosts=None, env_file=None, bucket=None, prefix=None):
    """Build the training project's compiled parts on the host, where the training runs (exits with the build's status)."""
    import sys

    from deploy.flow.build import BuildFailed, build_on_hosts

    settings, specs = _host_settings(c, hosts, env_file, bucket, prefix)
    opts = options(settings)
    gaps = reach(settings, hosts=specs, collect=True)
    if gaps and dry_run:
        what = settings.build_command or "bash ./build_*.sh, then python setup.py build_ext --inplace"
        print(f"would build on {', '.join(map(str, specs))} in REMOTE_DIR, where the training runs: {what}")
        unchecked(gaps)
    dead = {str(spec): g.error for spec in specs for g in gaps if g.kind == "host" and g.what == f"the host {spec}"}
    outcomes = build_on_hosts(specs, opts, settings.remote_dir, settings.build_command, sys.stdout, dry_run=dry_run,
                              unreachable=dead)
    if dry_run:
        print("Dry run: nothing was built.")
    failed = [o.error for o in outcomes if o.error is not None]
    if len(outcomes) == 1 and failed and isinstance(failed[0], BuildFailed):  # the build's own status is the task's
        raise Exit(f"Error: {failed[0]}", code=failed[0].exit_code)
    raise_if_failed(outcomes)


ns = Collection("runpod")
ns.add_task(deploy_runpod)
ns.add_task(sync_from_runpod)
ns.add_task(ssh)
ns.add_task(status)
ns.add_task(logs)
ns.add_task(stop)
ns.add_task(build_ext)
