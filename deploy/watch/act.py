"""The watcher's hands: ask for a pod, end one, arm its backstop, deploy, stop the training, bring results back.

Each call is one of the library's own operations, not a copy: the create is
:func:`deploy.pods.provision.create_first` over the plan of :func:`deploy.pods.lifecycle.plan_pod` (the
same GPU fallback list and price cap as ``fab pods.up``) under the name the state fixed beforehand;
the deploy is :func:`deploy.flow.rollout.deploy_hosts` (native runtime on a pod; ``CHECKPOINT=s3``
makes the training resume from the newest checkpoint in S3); results come back through
:func:`deploy.hosts.results.pull`; a pod is ended through the API, and a finished run's pod only when
:func:`deploy.pods.guard.check_termination` finds its newest checkpoint in S3. Every failure of a host
(whatever SSH raised) becomes one :class:`~deploy.errors.HostError` sentence: the watcher survives it.

Example::

    hands = Hands(settings, folder=Path("."), storage=storage, api=PodApi(settings.runpod_api_key), log=print)
    created = hands.create("gpu-deploy-3f2a9c1b-run-20261130-060215-a1b2-1")
    hands.deploy("root@203.0.113.7:40122", run_id, restart=False)
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import DeployError, HostError
from deploy.hosts import HostOptions, HostSpec, connect
from deploy.hosts.remote import program_source, run, run_line, write_atomic
from deploy.hosts.results import pull
from deploy.pods import state as pods_state
from deploy.pods.api import PodApi
from deploy.pods.guard import check_termination, pod_listing
from deploy.pods.lifecycle import plan_pod, project_of
from deploy.pods.models import Pod, PodError
from deploy.pods.naming import MANAGED, parse_pod_name
from deploy.pods.provision import create_first, ssh_answers
from deploy.runtimes.code.layout import META
from deploy.settings import Settings
from deploy.storage import Storage
from deploy.watch.facts import PodSeen

Log = Callable[[str], None]
RESULTS = "lightning_logs"
STOP_TIMEOUT = 120
"""Seconds a graceful stop waits for the training to save and flush (SIGTERM first, then SIGKILL)."""
BACKSTOP = f"{META}/backstop.py"
BACKSTOP_SLACK = 30.0
"""Seconds past its deadline a pod waits before ending itself: a living watcher acts first (and postpones it)."""


@dataclass(frozen=True)
class Created:
    pod_id: str
    price: float
    what: str


@dataclass(frozen=True)
class Ended:
    """What became of a pod the watcher ended: ``done`` False when it was left running (and why)."""

    done: bool
    message: str


@contextmanager
def host_errors(what: str, host: str) -> Iterator[None]:
    """Any failure of an SSH host (paramiko's, a socket's, ours) as one HostError sentence."""
    try:
        yield
    except DeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - a dead pod raises whatever its transport raises
        detail = str(exc).strip() or (f"the connection was lost ({exc.__class__.__name__})"
                                      if isinstance(exc, (EOFError, OSError)) else exc.__class__.__name__)
        raise HostError(f"{what} on {host} failed: {detail[:300]}") from None


@dataclass
class Hands:
    """What the watcher does to pods and runs; every collaborator passed in, so tests hand in real ones."""

    settings: Settings
    folder: Path
    storage: Storage
    api: PodApi
    log: Log = print
    results_dest: str = "."

    @property
    def options(self) -> HostOptions:
        return HostOptions.from_settings(self.settings)

    @property
    def project(self) -> str:
        return project_of(self.settings)

    def spec(self, host: str) -> HostSpec:
        return HostSpec.parse(host, 22, self.settings.runpod_user)

    def remote_dir(self, host: str) -> str:
        return self.spec(host).workdir(self.settings.remote_dir)

    # ----------------------------------------------------------------- pods

    def plan_prices(self) -> tuple[float, ...]:
        """The $/h of every create the plan would try (for the budget, and to refuse an unknown price)."""
        return plan_pod(self.settings, self.api, name="probe").prices

    def create(self, name: str, run_id: str) -> Created:
        """Create pod ``name`` (the first GPU type with capacity); the id is written to pods.json at once."""
        plan = plan_pod(self.settings, self.api, name=name)
        pod_id, request = create_first(self.api, plan.attempts, self.log)
        price = plan.prices[plan.attempts.index(request)]
        pods_state.record_pod(self.folder, Pod(id=pod_id, name=name, status="RUNNING", cost_per_hr=price),
                              project=self.project, run=run_id, made_by="train")
        return Created(pod_id, price, request.describe())

    def run_pods(self, run_id: str, tracked: set[str]) -> tuple[PodSeen, ...]:
        """Every pod of the account that is this run's: named with this project and run, or tracked by id."""
        seen = []
        for pod in self.api.pods():
            parsed = parse_pod_name(pod.name)
            ours = parsed is not None and parsed.kind == MANAGED and parsed.project == self.project \
                and parsed.run_id == run_id
            if ours or pod.id in tracked:
                ssh = pod.ssh if pod.status == "RUNNING" else None
                seen.append(PodSeen(id=pod.id, name=pod.name, status=pod.status, has_runtime=pod.has_runtime,
                                    price=pod.cost_per_hr, host=ssh.host_spec(self.settings.runpod_user) if ssh else "",
                                    uptime=float(pod.uptime_seconds)))
        return tuple(seen)

    def answers(self, host: str) -> bool:
        spec = self.spec(host)
        from deploy.pods.models import Endpoint

        return ssh_answers(Endpoint(spec.host, spec.port))

    def end_pod(self, pod_id: str, how: str = "terminate", force: bool = True, host: str = "") -> Ended:
        """Terminate (or stop) the pod. Without ``force`` a terminate is refused while the pod may hold a
        checkpoint that is not in S3. A pod RunPod no longer knows is already gone."""
        if how == "terminate" and not force:
            verdict = self._guard(host)
            if not verdict.safe:
                return Ended(False, verdict.reason)
        try:
            (self.api.stop if how == "stop" else self.api.terminate)(pod_id)
        except PodError:
            if self.api.get(pod_id) is None:
                pods_state.forget_pod(self.folder, pod_id)
                return Ended(True, f"pod {pod_id} is already gone")
            raise
        if how == "stop":
            pods_state.record_pod(self.folder, Pod(id=pod_id, name="", status="EXITED"))
        else:
            pods_state.forget_pod(self.folder, pod_id)
        return Ended(True, f"pod {pod_id} {'stopped' if how == 'stop' else 'terminated'}")

    def _guard(self, host: str) -> Any:
        if not host:
            return check_termination(self.storage, None, unreachable="without a known SSH address")
        spec = self.spec(host)
        listing = lambda: pod_listing(spec, self.options, self.remote_dir(host))  # noqa: E731
        try:
            with host_errors("Listing the pod's checkpoints", host):
                return check_termination(self.storage, listing)
        except HostError as exc:
            return check_termination(self.storage, None, unreachable=f"unreachable ({exc})")

    # ----------------------------------------------------------------- the pod's own deadline

    def arm(self, host: str, deadline: float, why: str) -> str:
        """Copy the backstop to the pod and start it with ``deadline``; one line saying what it did.

        How the backstop stops the training comes from the pod's runtime (``Service.backstop_args``).
        """
        from deploy.flow.status import service_on

        remote_dir = self.remote_dir(host)
        args = ["--dir", remote_dir, "--deadline", f"{deadline:.0f}", "--slack", f"{BACKSTOP_SLACK:.0f}",
                "--grace", str(STOP_TIMEOUT), "--why", why]
        with host_errors("Arming the pod's backstop", host), connect(self.spec(host), self.options) as conn:
            args += service_on(conn, remote_dir)[0].backstop_args()
            run(conn, ["mkdir", "-p", posixpath.join(remote_dir, META)], "Making the backstop's folder")
            for name in ("detach.py", "backstop.py"):  # backstop.py imports detach.py from its folder
                write_atomic(conn, posixpath.join(remote_dir, META, name), program_source(name).encode(), 0o700)
            result = run(conn, [self.settings.native_python, posixpath.join(remote_dir, BACKSTOP), "arm", *args],
                         "Arming the pod's backstop", warn=True)
        answer = _json_line(result.stdout)
        if not answer.get("armed"):
            return f"the pod cannot end itself: {answer.get('why') or result.stderr.strip()[-200:] or 'no answer'}"
        return f"the pod ends itself after {_clock(deadline + BACKSTOP_SLACK)} (its deadline; {why})"

    # ----------------------------------------------------------------- the run

    def deploy(self, host: str, run_id: str, restart: bool) -> str:
        """The deploy flow on ``host`` for ``run_id``; returns one line; raises a HostError when it failed."""
        from deploy.flow.rollout import Rollout, deploy_hosts
        from deploy.flow.sources import gather_sources

        settings, spec = self.settings, self.spec(host)
        with host_errors("The deploy", host):
            sources = gather_sources(self.storage, settings, log=self.log)
            # a managed run is one pod, whatever NUM_NODES says
            rollout = Rollout.from_settings(settings, sources, run_id=run_id, restart=restart, num_nodes=1)
            outcome = deploy_hosts([spec], rollout, settings, self.options, self.storage, sources.images,
                                   log=self.log)[0]
        if outcome.error is not None:
            error = outcome.error
            raise error if isinstance(error, DeployError) else HostError(f"The deploy on {host} failed: {error}")
        result = outcome.result
        return f"{', '.join(result.done) or 'nothing to do'} in {result.seconds:.0f} s"

    def reachable(self, host: str) -> bool:
        """SSH answers and runs a command (a quick look, for telling a dead pod from a failing deploy)."""
        try:
            with host_errors("A look", host), connect(self.spec(host), self.options) as conn:
                return bool(run_line(conn, "true", "A look", warn=True, timeout=20).ok)
        except HostError:
            return False

    def stop_training(self, host: str) -> str:
        """Stop the training gracefully, as ``fab stop`` does (:func:`deploy.flow.status.stop_run`: SIGTERM saves
        a checkpoint and the uploads flush), and say what it saved."""
        from deploy.flow.status import stop_run

        with host_errors("Stopping the training", host), connect(self.spec(host), self.options) as conn:
            return f"training {stop_run(conn, self.remote_dir(host), STOP_TIMEOUT, self.storage)}"

    def sync_results(self, host: str) -> str:
        """``lightning_logs`` back from the pod into ``results_dest``."""
        spec = self.spec(host)
        with host_errors("Bringing lightning_logs back", host), connect(spec, self.options) as conn:
            result = pull(conn, spec, self.options, self.remote_dir(host), RESULTS, self.results_dest)
        return result.summary()


def _json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return {}


def _clock(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%H:%M:%S UTC")
