"""The pod tasks as library calls: bring a pod up for the run, take one down, list the project's pods.

Each call plans first (plain data a ``--dry-run`` prints) and then acts; results are records. The
tasks in ``tasks/pods.py`` only parse flags and print, and a watcher can call :func:`bring_up` to
replace a lost pod with the same fallback list.

Example::

    result = bring_up(settings, Path("."), timeout=900, progress=print)
    print(result.host)                          # root@203.0.113.7:40122
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from deploy.errors import ConfigError
from deploy.hosts import HostOptions, HostSpec
from deploy.pods import state
from deploy.pods.api import PodApi
from deploy.pods.guard import check_termination, pod_listing
from deploy.pods.models import RUNNING, Pod, PodError
from deploy.pods.naming import MANUAL, manual_pod_name, project_id
from deploy.pods.plan import CheckpointVerdict, PodOptions, UpPlan, choose_pod, plan_up, project_pods, read_public_key
from deploy.pods.provision import Progress, create_first, wait_for_ssh
from deploy.settings import Settings
from deploy.storage import Storage


def project_of(settings: Settings) -> str:
    """The project's id (its bucket and prefix): pods carry it in their names."""
    return project_id(settings)


@dataclass(frozen=True)
class UpResult:
    plan: UpPlan
    pod: Pod | None = None
    """None for a dry run."""

    @property
    def host(self) -> str | None:
        ssh = self.pod.ssh if self.pod else None
        return ssh.host_spec() if ssh else None


def plan_pod(settings: Settings, api: PodApi | None = None, name: str | None = None) -> UpPlan:
    """The ordered create calls for the project's next pod (asks the API for GPU types and prices); every
    call carries ``name`` (default: a name for a pod made by hand)."""
    api = api or PodApi.from_settings(settings)
    options = PodOptions.from_settings(settings)
    public_key = read_public_key(settings.pod_public_key, settings.runpod_ssh_key)
    return plan_up(options, api.gpu_types(), name or manual_pod_name(project_of(settings)), public_key)


def bring_up(settings: Settings, folder: str | os.PathLike[str], timeout: float, dry_run: bool = False,
             progress: Progress = print, api: PodApi | None = None) -> UpResult:
    """Create the pod (first GPU type with capacity), wait for its public SSH port, remember it in ``folder``."""
    api = api or PodApi.from_settings(settings)
    plan = plan_pod(settings, api)
    if dry_run:
        return UpResult(plan)
    pod_id, _ = create_first(api, plan.attempts, progress)
    state.record_pod(folder, Pod(id=pod_id, name=plan.attempts[0].name, status=RUNNING), project=project_of(settings),
                     made_by=MANUAL)
    pod = wait_for_ssh(api, pod_id, timeout, progress)
    state.record_pod(folder, pod)
    return UpResult(plan, pod)


def list_project(settings: Settings, folder: str | os.PathLike[str], api: PodApi | None = None) -> list[Pod]:
    """The project's pods as the API reports them now; the state file is brought up to date."""
    api = api or PodApi.from_settings(settings)
    project = project_of(settings)
    pods = project_pods(api.pods(), project, state.recorded_ids(folder, project))
    state.refresh(folder, pods)
    return pods


@dataclass(frozen=True)
class DownPlan:
    pod: Pod
    action: str
    """``terminate`` or ``stop``."""
    verdict: CheckpointVerdict | None = None
    refused: str | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"{self.action} pod {self.pod.id} ({self.pod.name}, {self.pod.status.lower()})"]
        if self.verdict:
            lines.append(f"checkpoints: {self.verdict.reason}")
        return lines + self.notes


def _verdict(settings: Settings, pod: Pod) -> CheckpointVerdict:
    """Compare the pod's checkpoints with S3; a pod that cannot be reached over SSH cannot be judged safe."""
    try:
        storage = Storage.from_settings(settings)
    except ConfigError as exc:
        return CheckpointVerdict(False, f"its checkpoints cannot be compared with S3 ({str(exc).rstrip('.')})",
                                 "set the S3 settings")
    ssh = pod.ssh
    if pod.status != RUNNING or ssh is None:
        return check_termination(storage, None, unreachable=pod.stage)
    spec = HostSpec(ssh.ip, ssh.port, settings.runpod_user)
    options = HostOptions.from_settings(settings)
    return check_termination(storage, lambda: pod_listing(spec, options, settings.remote_dir))


def plan_down(settings: Settings, folder: str | os.PathLike[str], pod_id: str | None, stop: bool, force: bool,
              api: PodApi | None = None) -> DownPlan:
    """Which pod, terminate or stop, and (for terminate without --force) whether S3 has its newest checkpoint."""
    api = api or PodApi.from_settings(settings)
    project = project_of(settings)
    pod = choose_pod(api.pods(), pod_id, project, state.recorded_ids(folder, project))
    if stop:
        return DownPlan(pod, "stop", notes=[f"the volume ({pod.volume_gb} GB) is kept and still billed"])
    if force:
        return DownPlan(pod, "terminate", notes=["--force: checkpoints are not compared with S3"])
    verdict = _verdict(settings, pod)
    refused = None if verdict.safe else (f"Not terminating pod {pod.id}: {verdict.reason}; {verdict.hint}, "
                                         "or pass --force to terminate it anyway.")
    return DownPlan(pod, "terminate", verdict, refused)


def take_down(settings: Settings, folder: str | os.PathLike[str], plan: DownPlan, api: PodApi | None = None) -> None:
    """Do what ``plan`` says (refusing as it says) and bring the state file up to date."""
    if plan.refused:
        raise PodError(plan.refused)
    api = api or PodApi.from_settings(settings)
    if plan.action == "stop":
        api.stop(plan.pod.id)
        state.record_pod(folder, Pod(id=plan.pod.id, name=plan.pod.name, status="EXITED", gpu=plan.pod.gpu,
                                     gpu_count=plan.pod.gpu_count, cost_per_hr=plan.pod.cost_per_hr))
    else:
        api.terminate(plan.pod.id)
        state.forget_pod(folder, plan.pod.id)
