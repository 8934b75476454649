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
from tasks._boundary import DRY_RUN_HELP, ENV_FILE_HELP, JSON_HELP, boundary, settings_from_flags
from tasks._flags import number
from tasks._table import make_table, print_table

DEFAULT_TIMEOUT = 900.0  # large PyTorch images take minutes to pull on a fresh machine


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


def _storage_or_none(settings):
    from deploy.errors import DeployError
    from deploy.storage import Storage

    try:
        return Storage.from_settings(settings)
    except DeployError:
        return None  # without a bucket, managed runs' pods are listed without their owners


@task(name="list", default=True, auto_shortflags=False, help={"json": JSON_HELP, "env_file": ENV_FILE_HELP})
@boundary
def list_pods(c, json=False, env_file=None):
    """The project's pods: owner (a run, by hand, or ORPHAN), state, GPU, $/h, age, spend so far, stopped volumes."""
    from deploy.watch.owners import owned_pods

    settings = settings_from_flags(env_file=env_file)
    rows = owned_pods(settings, Path.cwd(), _storage_or_none(settings))
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
    from deploy.pods.api import PodApi

    settings = settings_from_flags(env_file=env_file)
    found = sorted(PodApi(settings.runpod_api_key).gpu_types(), key=lambda g: (g.memory_gb, g.id))
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
    "timeout": f"Seconds to wait for the pod's public SSH port (default {DEFAULT_TIMEOUT:.0f}; image pulls are slow).",
    "env_file": ENV_FILE_HELP})
@boundary
def up(c, dry_run=False, timeout=None, env_file=None):
    """Create the run's pod (POD_GPU_TYPES in order) and wait until its SSH port is public."""
    seconds = number(DEFAULT_TIMEOUT if timeout is None else timeout, "--timeout", minimum=1)
    settings = settings_from_flags(env_file=env_file)
    result = bring_up(settings, Path.cwd(), seconds, dry_run=dry_run, progress=_say)
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
    "dry_run": DRY_RUN_HELP, "env_file": ENV_FILE_HELP})
@boundary
def down(c, pod=None, orphans=False, stop=False, force=False, dry_run=False, env_file=None):
    """Terminate the pod (or --stop it); refuses while its newest checkpoint is not in S3, unless --force."""
    from deploy.errors import ConfigError

    settings = settings_from_flags(env_file=env_file)
    if orphans:
        if pod:
            raise ConfigError("Give --pod or --orphans, not both.")
        _down_orphans(settings, stop=stop, force=force, dry_run=dry_run)
        return
    plan = plan_down(settings, Path.cwd(), pod, stop=stop, force=force)
    print("\n".join(plan.lines()))
    if dry_run:
        print("Dry run: nothing changed." if not plan.refused else f"Dry run: {plan.refused}")
        return
    take_down(settings, Path.cwd(), plan)
    print(f"Pod {plan.pod.id} {'stopped' if plan.action == 'stop' else 'terminated'}.")


def _down_orphans(settings, stop: bool, force: bool, dry_run: bool) -> None:
    """Each orphan through the same plan as one named pod (the guard included); every refusal is reported."""
    from deploy.errors import DeployError
    from deploy.pods.models import PodError
    from deploy.watch.owners import owned_pods

    found = [r for r in owned_pods(settings, Path.cwd(), _storage_or_none(settings)) if r.orphan]
    if not found:
        print("This project has no orphan pods; nothing to do.")
        return
    failed = []
    for row in found:
        print(printable(f"{row.pod.id}: {row.owner}"))
        try:
            plan = plan_down(settings, Path.cwd(), row.pod.id, stop=stop, force=force)
            print("\n".join(f"  {line}" for line in plan.lines()))
            if dry_run:
                print(f"  dry run: {plan.refused or 'nothing changed'}")
                continue
            take_down(settings, Path.cwd(), plan)
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
