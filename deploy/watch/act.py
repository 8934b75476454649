"""The watcher's hands: bring a pod up, deploy to it, stop the training, bring results back, end the pod.

Each call is one of the library's own operations, not a copy: pods come from
:mod:`deploy.pods.lifecycle` and :mod:`deploy.pods.provision` (the same GPU fallback list and price
cap as ``fab pods.up``), the deploy is :func:`deploy.flow.rollout.deploy_hosts` (native runtime on a
pod; ``CHECKPOINT=s3`` makes the training resume from the newest checkpoint in S3), results come back
through :func:`deploy.hosts.results.pull`, and a pod is ended by :func:`deploy.pods.lifecycle.plan_down`
and ``take_down``, which refuse to delete a volume whose newest checkpoint is not in S3.

Example::

    hands = Hands(settings, folder=Path("."), storage=storage, api=PodApi(settings.runpod_api_key), log=print)
    pod = hands.create_pod(on_created=lambda pod_id: ...)    # the first GPU type with capacity
    hands.deploy(pod_host, run_id, restart=False)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import DeployError, HostError
from deploy.hosts import HostOptions, HostSpec, connect
from deploy.hosts.results import pull
from deploy.pods import state as pods_state
from deploy.pods.api import PodApi
from deploy.pods.lifecycle import plan_down, plan_pod, take_down
from deploy.pods.models import Pod
from deploy.pods.provision import create_first, wait_for_ssh
from deploy.settings import Settings
from deploy.storage import Storage

Log = Callable[[str], None]
RESULTS = "lightning_logs"
STOP_TIMEOUT = 120
"""Seconds a graceful stop waits for the training to save and flush (SIGTERM first, then SIGKILL)."""


@dataclass(frozen=True)
class Ended:
    """What became of a pod the watcher ended: ``done`` False when it was left running (and why)."""

    done: bool
    message: str


@dataclass
class Hands:
    """What the watcher does to pods and runs; every collaborator passed in, so tests hand in real ones."""

    settings: Settings
    folder: Path
    storage: Storage
    api: PodApi
    log: Log = print
    ssh_timeout: float = 900.0
    """Seconds a new pod may take to show a public SSH port (an image pull on a fresh machine is slow)."""
    results_dest: str = "."

    @property
    def options(self) -> HostOptions:
        return HostOptions.from_settings(self.settings)

    def spec(self, host: str) -> HostSpec:
        return HostSpec.parse(host, 22, self.settings.runpod_user)

    def remote_dir(self, host: str) -> str:
        return self.spec(host).workdir(self.settings.remote_dir)

    # ----------------------------------------------------------------- pods

    def create_pod(self, on_created: Callable[[str], None]) -> str:
        """Create the run's next pod (the first GPU type with capacity); ``on_created`` hears its id at once,
        so the watcher saves it before the long wait for SSH and a restart never makes a second one."""
        plan = plan_pod(self.settings, self.folder, self.api)
        pod_id, request = create_first(self.api, plan.attempts, self.log)
        pods_state.record_pod(self.folder, Pod(id=pod_id, name=request.name, status="RUNNING"))
        on_created(pod_id)
        return pod_id

    def wait_for_pod(self, pod_id: str) -> Pod:
        """Wait for the pod's public SSH port; remember it in ``.gpu-deploy/pods.json`` as ``fab pods.up`` does."""
        pod = wait_for_ssh(self.api, pod_id, self.ssh_timeout, self.log)
        pods_state.record_pod(self.folder, pod)
        return pod

    def end_pod(self, pod_id: str, action: str, force: bool = False) -> Ended:
        """Terminate or stop the pod. A pod RunPod no longer knows is already gone.

        Without ``force`` a terminate is refused (the pod is left running, and the answer says why)
        while the pod may hold a checkpoint that is not in S3."""
        try:
            plan = plan_down(self.settings, self.folder, pod_id, stop=action == "stop", force=force, api=self.api)
        except DeployError as exc:
            if self.api.get(pod_id) is None:
                pods_state.forget_pod(self.folder, pod_id)
                return Ended(True, f"pod {pod_id} is already gone")
            raise HostError(f"Cannot {action} pod {pod_id}: {exc}") from None
        if plan.refused:
            return Ended(False, f"pod {pod_id} left running: {plan.refused}")
        take_down(self.settings, self.folder, plan, api=self.api)
        return Ended(True, f"pod {pod_id} {'stopped' if action == 'stop' else 'terminated'}")

    # ----------------------------------------------------------------- the run

    def deploy(self, host: str, run_id: str, restart: bool) -> str:
        """The deploy flow on ``host`` for ``run_id``; returns one line; raises when the host failed."""
        from deploy.flow.rollout import Rollout, deploy_hosts
        from deploy.flow.sources import bucket_images, resolve_image, stage_local_dataset

        settings, spec = self.settings, self.spec(host)
        images = bucket_images(self.storage, settings, log=self.log)
        image_id, image_bytes, problem = resolve_image(images, settings.image, settings.runtime)
        dataset = settings.dataset
        if dataset and os.path.isdir(dataset):
            dataset, what = stage_local_dataset(self.storage, dataset)
            self.log(f"dataset   {what}")
        rollout = Rollout(image_ref=settings.image, image_id=image_id, image_bytes=image_bytes,
                          remote_dir=settings.remote_dir, data_dir=settings.data_dir, dataset=dataset, restart=restart,
                          runtime=settings.runtime, native_python=settings.native_python, image_problem=problem,
                          run_id=run_id)
        outcome = deploy_hosts([spec], rollout, settings, self.options, self.storage, images, log=self.log)[0]
        if outcome.error is not None:
            raise outcome.error
        result = outcome.result
        return f"{', '.join(result.done) or 'nothing to do'} in {result.seconds:.0f} s"

    def stop_training(self, host: str) -> str:
        """Stop the training gracefully (SIGTERM saves a checkpoint and the uploads flush)."""
        from deploy.flow.status import service_on

        with connect(self.spec(host), self.options) as conn:
            service, _ = service_on(conn, self.remote_dir(host))
            before = service.state(conn)
            if not (before.running or before.status == "orphaned"):
                return f"training was {before.status}"
            service.stop(conn, timeout=STOP_TIMEOUT)
        return "training stopped gracefully"

    def sync_results(self, host: str) -> str:
        """``lightning_logs`` back from the pod into ``results_dest``."""
        spec = self.spec(host)
        with connect(spec, self.options) as conn:
            result = pull(conn, spec, self.options, self.remote_dir(host), RESULTS, self.results_dest)
        return result.summary()
