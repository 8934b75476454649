"""The ledger as the deploy flow, ``fab stop`` and the pods watcher use it: open the run, record what happened.

Example (what ``fab deploy-runpod`` does)::

    run = open_run(storage, settings, image="piper-train:latest", image_id="sha256:...")
    print(run.run_id)                          # goes to the host's .env as RUN_ID
    run.deployed("root@10.0.0.5:22", gpu="NVIDIA L40S", gpus=1, restarted=False, runtime="native")

The pods watcher (a writer of its own) records with the same object::

    run = RunLedger(storage, run_id, writer_name("watch"))
    run.event("lost", host="root@203.0.113.7:40022", reason="pod EXITED")
    run.event("provisioned", host="root@203.0.113.9:40022", price_per_hour=0.79, gpu="NVIDIA L40S", gpus=1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deploy.ledger.cost import parse_prices, price_for
from deploy.errors import DeployError
from deploy.ledger.identity import make_record, resolve_run_id
from deploy.ledger.index import current_run
from deploy.ledger.model import Event
from deploy.ledger.store import RunLedger, writer_name
from deploy.settings import Settings
from deploy.storage import Storage


class DeployRun(RunLedger):
    """A :class:`RunLedger` that knows the operator's prices, for the deploy's own events."""

    def __init__(self, storage: Storage, run_id: str, settings: Settings, role: str = "deploy") -> None:
        super().__init__(storage, run_id, writer_name(role))
        self.prices = parse_prices(settings.host_price_per_hour or "")

    def deployed(self, host: str, gpu: str = "", gpus: int = 0, restarted: bool = False,
                 **data: Any) -> Event:
        """``deployed`` (the service started on ``host``) or ``restarted`` (it was running and restarted)."""
        return self.event("restarted" if restarted else "deployed", host=host, gpu=gpu or None,
                          gpus=gpus or None, price_per_hour=price_for(host, self.prices), **data)

    def report(self, spec: Any, facts: Any, result: Any) -> None:
        """The deploy flow's per-host callback: an event when the deploy (re)started training there.

        A deploy that changed nothing records nothing. A failure to record is printed, never fatal:
        training is already running."""
        done = tuple(getattr(result, "done", ()) or ())
        if not ({"start", "restart"} & set(done)):
            return
        gpu, count = gpu_summary(getattr(facts, "gpus", ()) if facts is not None else ())
        try:
            self.deployed(str(spec), gpu=gpu, gpus=count, restarted="restart" in done,
                          runtime=getattr(result, "runtime", None), steps=",".join(done))
        except DeployError as exc:
            print(f"run ledger: could not record the deploy on {spec}: {exc}")

    def stopped(self, hosts: Sequence[str]) -> None:
        """``stopped`` for each host ``fab stop`` stopped (best effort, as :meth:`report`)."""
        for host in hosts:
            try:
                self.event("stopped", host=host)
            except DeployError as exc:
                print(f"run ledger: could not record the stop on {host}: {exc}")


def open_run(storage: Storage, settings: Settings, image: str = "", image_id: str = "",
             argv: Sequence[str] | None = None, dry_run: bool = False,
             resolved: tuple[str, bool] | None = None) -> tuple[DeployRun, str]:
    """The run this deploy belongs to (see :func:`deploy.ledger.identity.resolve_run_id`; ``resolved`` when the
    caller asked already) and a line saying which; its record is written if it is new (never overwritten),
    except on a dry run."""
    run_id, new = resolved or resolve_run_id(storage, settings, save=not dry_run)
    run = DeployRun(storage, run_id, settings)
    why = ("RUN_ID" if settings.run_id else "a new run: none unfinished in the bucket" if new
           else "continuing the newest unfinished run")
    if not dry_run:
        run.create(make_record(run_id, settings, storage, image=image, image_id=image_id, argv=argv))
    return run, f"run       {run_id} ({why}; `fab runs.show --run {run_id}`)"


def current_run_id(storage: Storage, settings: Settings) -> str | None:
    """The run ``fab stop`` and ``fab status`` talk about: ``RUN_ID``, else the newest unfinished run."""
    if settings.run_id:
        return settings.run_id
    found = current_run(storage)
    return str(found["run_id"]) if found else None


def gpu_summary(gpus: Sequence[Any]) -> tuple[str, int]:
    """("NVIDIA L40S", 2) from a probe's GPUs; ("", 0) without any."""
    names = sorted({getattr(g, "name", "") for g in gpus} - {""})
    return (", ".join(names), len(gpus)) if gpus else ("", 0)


def record_stops(storage: Storage, settings: Settings, hosts: Sequence[str]) -> None:
    """``fab stop``: a ``stopped`` event in the current run for each host it stopped; best effort."""
    if not hosts:
        return
    try:
        run_id = current_run_id(storage, settings)
    except DeployError as exc:
        print(f"run ledger: the stop is not recorded: {exc}")
        return
    if run_id:
        DeployRun(storage, run_id, settings).stopped(hosts)
