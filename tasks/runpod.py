"""The run on the GPU host: deploy it, watch it, stop it, bring its results back."""

from __future__ import annotations

import json as jsonlib
import os
import shlex

from invoke import Collection, task

from deploy.errors import DeployError
from deploy.hosts import connect, for_each_host, require_sftp
from deploy.errors import ConfigError
from deploy.settings import ENV_FILE_VARIABLE
from deploy.hosts.results import pull, remote_path
from deploy.hosts.ssh import ssh_command
from tasks._boundary import DRY_RUN_HELP, ENV_FILE_HELP, JSON_HELP, boundary, settings_from_flags
from tasks._flags import number, whole
from tasks._hosts import HOSTS_HELP, options, raise_if_failed, targets


@task(
    auto_shortflags=False,
    iterable=["exclude"],
    help={
        "path": "Path under REMOTE_DIR to bring back (default: lightning_logs).",
        "dest": "Local folder to put it in (default: the current folder).",
        "exclude": "Glob of files to leave on the host; repeat for more (e.g. --exclude='*.ckpt').",
        "method": "auto (rsync when both ends have it, else SFTP), rsync or sftp.",
        "hosts": HOSTS_HELP,
        "env_file": ENV_FILE_HELP,
    },
)
@boundary
def sync_from_runpod(c, path="lightning_logs", dest=".", exclude=None, method="auto", hosts=None, env_file=None):
    """Bring a path under REMOTE_DIR back from the host, incrementally."""
    if method not in ("auto", "rsync", "sftp"):
        raise ConfigError(f"--method must be auto, rsync or sftp, got {method!r}.")
    settings = settings_from_flags(env_file=env_file)
    specs = targets(c, settings, hosts)[:1]  # results come from the first host (rank 0)
    opts = options(settings)
    for spec in specs:  # checked here, before any connection: a bad --path never waits for a timeout
        require_sftp(spec)
        remote_path(spec.workdir(settings.remote_dir), path)

    def work(spec):
        with connect(spec, opts) as conn:
            return pull(conn, spec, opts, spec.workdir(settings.remote_dir), path, dest, exclude or (), method=method)

    outcomes = for_each_host(specs, work)
    for outcome in outcomes:
        if outcome.result is not None:
            print(outcome.result.summary())
    raise_if_failed(outcomes)


@task(auto_shortflags=False, help={"hosts": HOSTS_HELP, "env_file": ENV_FILE_HELP})
@boundary
def ssh(c, hosts=None, env_file=None):
    """Open an interactive shell on the host, in REMOTE_DIR."""
    settings = settings_from_flags(env_file=env_file)
    spec = targets(c, settings, hosts)[0]
    cmd = ssh_command(spec, options(settings)) + ["-t", f"{spec.user}@{spec.host}",
                                                  f"cd {shlex.quote(spec.workdir(settings.remote_dir))} 2>/dev/null; exec $SHELL -l"]
    os.execvp(cmd[0], cmd)


@task(
    auto_shortflags=False,
    help={
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
        "wait": "Seconds to wait for training to start (default 300).",
        "hosts": HOSTS_HELP,
        "env_file": ENV_FILE_HELP,
    }
)
@boundary
def deploy_runpod(c, image=None, dataset=None, nodes=None, runtime=None, restart=False, build=False, dry_run=False,
                  wait=None, hosts=None, env_file=None, from_run=None):
    """Deploy the training to the GPU host(s): probe, provision, ship .env, image or code, start."""
    from deploy.flow.group import deploy_group
    from deploy.flow.rollout import Rollout, deploy_hosts
    from deploy.flow.sources import bucket_images, build_and_push, resolve_image, stage_local_dataset
    from deploy.ledger.identity import resolve_run_id
    from deploy.ledger.runs import open_run
    from deploy.storage import Storage

    seconds = number(300 if wait is None else wait, "--wait")  # None defaults: invoke would cast with a traceback
    if env_file:
        # The flag names the active env file as ENV_FILE does; the working-tree selection reads ENV_FILE,
        # so this file stays on the laptop whatever its name (deploy.runtimes.native.tree).
        os.environ[ENV_FILE_VARIABLE] = env_file
    nodes = None if nodes is None else whole(nodes, "--nodes", minimum=1)
    settings = settings_from_flags(env_file=env_file, IMAGE=image, DATASET=dataset, NUM_NODES=nodes, RUNTIME=runtime,
                                   FROM_RUN=from_run)
    settings.require("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET")
    named = hosts is not None or bool(settings.runpod_host) or hasattr(c, "host")
    specs = targets(c, settings, hosts) if named else None  # hosts named by hand: checked before the network
    storage = Storage.from_settings(settings)
    run_id, new = resolve_run_id(storage, settings, save=not dry_run)
    if specs is None:  # this run's pods (pods.json); names RUNPOD_HOST when there is none
        specs = targets(c, settings, hosts, run=run_id, single=settings.num_nodes == 1)
    if len(specs) > 1 and settings.num_nodes == 1:
        raise ConfigError(f"{len(specs)} hosts for run {run_id} with NUM_NODES=1 would be {len(specs)} writers of "
                          "one run's checkpoints; set NUM_NODES (--nodes) to train one run across them, or deploy "
                          "each host with its own RUN_ID.")
    if build:
        build_and_push(settings, storage, dry_run=dry_run, log=print)
    images = bucket_images(storage, settings, log=print)  # says when the bucket's image is stale
    image_id, image_bytes, image_problem = resolve_image(images, settings.image, settings.runtime)
    dataset_name = settings.dataset
    if dataset_name and os.path.isdir(dataset_name):
        dataset_name, what = stage_local_dataset(storage, dataset_name, dry_run=dry_run)
        print(f"dataset   {what}")
    ledger, which = open_run(storage, settings, image=settings.image, image_id=image_id, dry_run=dry_run,
                             resolved=(run_id, new))
    print(which)
    rollout = Rollout(image_ref=settings.image, image_id=image_id, image_bytes=image_bytes,
                      remote_dir=settings.remote_dir, data_dir=settings.data_dir, dataset=dataset_name,
                      restart=restart, wait=seconds, num_nodes=settings.num_nodes,
                      master_addr=settings.master_addr or specs[0].host, master_port=settings.master_port,
                      runtime=settings.runtime, native_python=settings.native_python, image_problem=image_problem,
                      run_id=ledger.run_id)
    if settings.num_nodes > 1:
        outcomes = deploy_group(specs, rollout, settings, options(settings), storage, images, dry_run=dry_run, log=print)
        for o in outcomes:
            if o.result is not None:
                ledger.report(o.spec, None, o.result)
    else:
        outcomes = deploy_hosts(specs, rollout, settings, options(settings), storage, images, dry_run=dry_run,
                                log=print, report=ledger.report)
    for o in outcomes:
        if o.error is not None:
            print(f"{o.spec}: failed: {o.error}")
        elif o.result is None:
            print(f"{o.spec}: dry run, nothing changed")
        elif not o.result.done:
            what = settings.image if o.result.runtime == "compose" else "this code"
            print(f"{o.spec}: nothing to do; the service already runs {what} with these settings.")
        else:
            print(f"{o.spec}: {', '.join(o.result.done)} in {o.result.seconds:.0f} s; training is running. "
                  f"Follow it with: {o.result.follow}")
    raise_if_failed(outcomes)


def _storage_or_none(settings):
    from deploy.storage import Storage

    try:
        return Storage.from_settings(settings)
    except DeployError:
        return None  # status still shows the host when no bucket is configured


@task(auto_shortflags=False, help={"json": JSON_HELP, "tail": "How many log lines to show (default 10).",
                                   "hosts": HOSTS_HELP, "env_file": ENV_FILE_HELP})
@boundary
def status(c, json=False, tail=None, hosts=None, env_file=None):
    """Show the service, GPUs, last log lines and the newest checkpoint in S3."""
    from deploy.flow.status import run_status

    lines = whole(10 if tail is None else tail, "--tail")
    settings = settings_from_flags(env_file=env_file)
    opts = options(settings)
    storage = _storage_or_none(settings)

    def work(spec):
        with connect(spec, opts) as conn:
            return run_status(conn, str(spec), spec.workdir(settings.remote_dir), storage, tail=lines)

    outcomes = for_each_host(targets(c, settings, hosts), work)
    if json:
        print(jsonlib.dumps([o.result.to_dict() if o.result else {"host": str(o.spec), "error": str(o.error)}
                             for o in outcomes], indent=2, default=str))
    else:
        for outcome in outcomes:
            if outcome.result is not None:
                print("\n".join(outcome.result.describe()))
    raise_if_failed(outcomes)


@task(auto_shortflags=False, help={"follow": "Keep printing new lines until Ctrl-C.",
                                   "tail": "How many lines to start with (default 100).", "hosts": HOSTS_HELP,
                                   "env_file": ENV_FILE_HELP})
@boundary
def logs(c, follow=False, tail=None, hosts=None, env_file=None):
    """Print the training service's logs (cleaned of terminal escapes; a progress bar shows its last state)."""
    import sys

    from deploy.flow.status import stream_logs

    lines = whole(100 if tail is None else tail, "--tail")
    settings = settings_from_flags(env_file=env_file)
    opts = options(settings)
    for spec in targets(c, settings, hosts):
        with connect(spec, opts) as conn:
            print(f"--- {spec}", flush=True)
            try:
                stream_logs(conn, spec.workdir(settings.remote_dir), sys.stdout, tail=lines, follow=follow)
            except KeyboardInterrupt:
                if not follow:
                    raise
                return  # Ctrl-C is how --follow ends


@task(auto_shortflags=False, help={"timeout": "Seconds to wait for pending uploads to flush before the kill "
                                              "(default 120).", "hosts": HOSTS_HELP, "env_file": ENV_FILE_HELP})
@boundary
def stop(c, timeout=None, hosts=None, env_file=None):
    """Stop training gracefully: SIGTERM, pending uploads flush, then the container (or native process) stops."""
    from deploy.flow.status import stop_run

    seconds = whole(120 if timeout is None else timeout, "--timeout", minimum=1)
    settings = settings_from_flags(env_file=env_file)
    opts = options(settings)

    def work(spec):
        with connect(spec, opts) as conn:
            return stop_run(conn, spec.workdir(settings.remote_dir), seconds)

    outcomes = for_each_host(targets(c, settings, hosts), work)
    for o in outcomes:
        if o.error is None:
            print(f"{o.spec}: {o.result}")
    storage = _storage_or_none(settings)
    if storage is not None:
        from deploy.ledger.runs import record_stops

        record_stops(storage, settings, [str(o.spec) for o in outcomes if o.error is None and o.result])
    raise_if_failed(outcomes)


ns = Collection("runpod")
ns.add_task(deploy_runpod)
ns.add_task(sync_from_runpod)
ns.add_task(ssh)
ns.add_task(status)
ns.add_task(logs)
ns.add_task(stop)
