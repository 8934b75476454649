"""`fab pods.*`: RunPod pods from the API: GPU types and prices, up, list with cost, down.

``fab pods.up`` creates the run's pod (GPU types tried in order) and waits for its public SSH port,
then remembers it in ``.gpu-deploy/pods.json`` so ``fab deploy-runpod`` finds it without RUNPOD_HOST.
Mutating tasks take ``--dry-run``; listings take ``--json``.
"""

from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path

from invoke import Collection, task

from deploy.hosts.text import printable, rich_text
from deploy.pods.lifecycle import bring_up, list_project, plan_down, take_down
from deploy.pods.models import RUNNING, Pod
from deploy.pods.plan import spend_so_far, stopped_volume_per_day
from tasks._boundary import BUCKET_FLAGS, DRY_RUN_HELP, ENV_FILE_HELP, JSON_HELP, boundary, settings_from_flags
from tasks._flags import duration, duration_help
from tasks._reach import reach, unchecked
from deploy.reach import raise_gaps
from tasks._table import make_table, print_table

DEFAULT_TIMEOUT = "15m"  # large PyTorch images take minutes to pull on a fresh machine


def _say(line: str) -> None:
    print(line, flush=True)


def _uptime(seconds: int) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _state(pod: Pod) -> str:
    """The table's state column: the SSH address has its own column."""
    if pod.status == RUNNING and not pod.has_runtime:
        return "no runtime (starting, or its machine is down)"
    return pod.stage if pod.status != RUNNING or pod.ssh is None else "running"


def _api(env_file, bucket, prefix, dry_run=False, with_bucket=False):
    """Settings, RunPod's API (the key required) and the bucket when one is configured, all checked at once
    before any work; a dry run gets back what could not be checked (the bucket is optional: see below)."""
    from deploy.pods.api import PodApi
    from deploy.storage import Storage

    settings = settings_from_flags(env_file=env_file, S3_BUCKET=bucket, S3_PREFIX=prefix)
    api = PodApi.from_settings(settings)
    configured = with_bucket and not settings.missing("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET")
    storage = Storage.from_settings(settings, interactive=True) if configured else None
    gaps = reach(settings, storage=storage, api=api, collect=True)
    if gaps and not dry_run:
        raise_gaps([g for g in gaps if g.kind == "api"] or gaps)
    return settings, api, storage, gaps


@task(name="list", default=True, auto_shortflags=False, help={"json": JSON_HELP, **BUCKET_FLAGS})
@boundary
def list_pods(c, json=False, env_file=None, bucket=None, prefix=None):
    """The project's pods: owner (a run, by hand, or ORPHAN), state, GPU, $/h, age, spend so far, stopped volumes."""
    from deploy.watch.owners import owned_pods

    # Without a bucket, managed runs' pods are listed without their owners.
    settings, api, storage, _ = _api(env_file, bucket, prefix, with_bucket=True)
    rows = owned_pods(settings, Path.cwd(), storage, api)
    if json:
        print(jsonlib.dumps([{**r.pod.to_dict(), "owner": r.owner, "orphan": r.orphan,
                              "spend_so_far": round(spend_so_far(r.pod), 4),
                              "stopped_volume_per_day": round(stopped_volume_per_day(r.pod), 4)} for r in rows],
                            indent=2))
        return
    if not rows:
        print("This project has no pods; fab pods.up creates one.")
        return
    table = make_table(("id", "name", "owner", "state", "GPU", "$/h", "age", "spent", "ssh"),
                       right=("$/h", "age", "spent"))
    for row in rows:
        pod, ssh = row.pod, row.pod.ssh
        table.add_row(rich_text(pod.id), rich_text(pod.name), rich_text(("ORPHAN: " if row.orphan else "") + row.owner),
                      rich_text(_state(pod)), rich_text(f"{pod.gpu_count} x {pod.gpu}") if pod.gpu else "-",
                      f"{pod.cost_per_hr:.2f}", _uptime(pod.uptime_seconds), f"{spend_so_far(pod):.2f}",
                      f"{ssh.ip}:{ssh.port}" if ssh else "-")
    print_table(table)
    stopped = [r.pod for r in rows if stopped_volume_per_day(r.pod)]
    if stopped:
        idle = sum(stopped_volume_per_day(p) for p in stopped)
        print(f"{len(stopped)} stopped pod(s) still bill their volume: ${idle:.2f}/day "
              f"({', '.join(p.id for p in stopped)}); fab pods.down --pod ID terminates one.")
    orphans = [r.pod for r in rows if r.orphan]
    if orphans:
        rate = sum(p.cost_per_hr for p in orphans if p.status == RUNNING)
        print(f"{len(orphans)} orphan pod(s) no live run owns bill ${rate:.2f}/h ({', '.join(p.id for p in orphans)}); "
              "fab pods.down --orphans ends them.")


@task(auto_shortflags=False, help={"json": JSON_HELP, "env_file": ENV_FILE_HELP})
@boundary
def gpus(c, json=False, env_file=None):
    """GPU types RunPod offers, with memory and on-demand $/h per GPU on the secure and community clouds."""
    _, api, _, _ = _api(env_file, None, None)
    found = sorted(api.gpu_types(), key=lambda g: (g.memory_gb, g.id))
    if json:
        print(jsonlib.dumps([g.to_dict() for g in found], indent=2))
        return
    table = make_table(("id", "memory", "secure $/h", "community $/h"), right=("memory", "secure $/h", "community $/h"))
    for gpu in found:
        table.add_row(gpu.id, f"{gpu.memory_gb} GB",
                      *("-" if p is None else f"{p:.2f}" for p in (gpu.secure_price, gpu.community_price)))
    print_table(table)


@task(auto_shortflags=False, help={
    "dry_run": DRY_RUN_HELP,
    "timeout": duration_help("How long to wait for the pod's public SSH port (image pulls are slow)",
                             DEFAULT_TIMEOUT),
    **BUCKET_FLAGS})
@boundary
def up(c, dry_run=False, timeout=None, env_file=None, bucket=None, prefix=None):
    """Create the run's pod (POD_GPU_TYPES in order) and wait until its SSH port is public."""
    from deploy.pods.plan import read_public_key

    seconds = duration(DEFAULT_TIMEOUT if timeout is None else timeout, "--timeout", minimum=1)
    settings = settings_from_flags(env_file=env_file, S3_BUCKET=bucket, S3_PREFIX=prefix)
    settings.require("RUNPOD_API_KEY")
    read_public_key(settings.pod_public_key, settings.runpod_ssh_key)  # a local check, before the API
    settings, api, _, gaps = _api(env_file, bucket, prefix, dry_run)
    if gaps:
        print(f"pod       {settings.pod_gpu_count} x the first of {settings.pod_gpu_types} with capacity "
              f"({settings.pod_cloud_type} cloud); prices: not checked")
        unchecked(gaps)
    result = bring_up(settings, Path.cwd(), seconds, dry_run=dry_run, progress=_say, api=api)
    if result.pod is None:
        print("\n".join(result.plan.lines()))
        print(f"Dry run: pod {result.plan.attempts[0].name} would be created with the first that has capacity.")
        return
    pod = result.pod
    print(f"Pod {pod.id} is up: {pod.gpu_count} x {pod.gpu or '?'}, ${pod.cost_per_hr:.2f}/h, SSH {result.host}.")
    print(f"fab deploy-runpod finds it (.gpu-deploy/pods.json); elsewhere use:\nRUNPOD_HOST={result.host}")
    sys.stdout.flush()


@task(auto_shortflags=False, help={
    "pod": "Pod id or name (default: the project's only pod).",
    "orphans": "End every pod of this project that no live run owns (fab pods marks them).",
    "stop": "Stop instead of terminate: the GPU is released, the volume kept (and billed).",
    "force": "Terminate even when the pod may hold a checkpoint that is not in S3.",
    "dry_run": DRY_RUN_HELP, **BUCKET_FLAGS})
@boundary
def down(c, pod=None, orphans=False, stop=False, force=False, dry_run=False, env_file=None, bucket=None,
         prefix=None):
    """Terminate the pod (or --stop it); refuses while its newest checkpoint is not in S3, unless --force."""
    from deploy.errors import ConfigError

    if orphans and pod:
        raise ConfigError("Give --pod or --orphans, not both.")
    settings, api, storage, gaps = _api(env_file, bucket, prefix, dry_run, with_bucket=not stop and not force)
    if gaps:
        what = "the orphan pods" if orphans else f"pod {pod}" if pod else "the project's pod"
        print(f"would {'stop' if stop else 'terminate'} {what}"
              + ("" if stop or force else " once S3 holds its newest checkpoint"))
        unchecked(gaps)
    if orphans:
        _down_orphans(settings, stop=stop, force=force, dry_run=dry_run, api=api, storage=storage)
        return
    plan = plan_down(settings, Path.cwd(), pod, stop=stop, force=force, api=api)
    print("\n".join(plan.lines()))
    if dry_run:
        print("Dry run: nothing changed." if not plan.refused else f"Dry run: {plan.refused}")
        return
    take_down(settings, Path.cwd(), plan, api=api)
    print(f"Pod {plan.pod.id} {'stopped' if plan.action == 'stop' else 'terminated'}.")


def _down_orphans(settings, stop: bool, force: bool, dry_run: bool, api, storage) -> None:
    """Each orphan through the same plan as one named pod (the guard included); every refusal is reported."""
    from deploy.errors import DeployError
    from deploy.pods.models import PodError
    from deploy.watch.owners import owned_pods

    found = [r for r in owned_pods(settings, Path.cwd(), storage, api) if r.orphan]
    if not found:
        print("This project has no orphan pods; nothing to do.")
        return
    failed = []
    for row in found:
        print(printable(f"{row.pod.id}: {row.owner}"))
        try:
            plan = plan_down(settings, Path.cwd(), row.pod.id, stop=stop, force=force, api=api)
            print("\n".join(f"  {line}" for line in plan.lines()))
            if dry_run:
                print(f"  dry run: {plan.refused or 'nothing changed'}")
                continue
            take_down(settings, Path.cwd(), plan, api=api)
            print(f"  pod {plan.pod.id} {'stopped' if plan.action == 'stop' else 'terminated'}")
        except DeployError as exc:
            failed.append(f"{row.pod.id}: {exc}")
            print(f"  {exc}")
    if failed:
        raise PodError(f"{len(failed)} of {len(found)} orphan pods were not ended; see above (--force terminates a pod "
                       "whose checkpoints cannot be compared with S3).")


ns = Collection("pods")
ns.add_task(list_pods, default=True)
for _task in (gpus, up, down):
    ns.add_task(_task)
