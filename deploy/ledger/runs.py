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
from deploy.ledger.identity import make_record, resolve_run_id
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


def open_run(storage: Storage, settings: Settings, image: str = "", image_id: str = "",
             argv: Sequence[str] | None = None) -> DeployRun:
    """The run this deploy belongs to (see :func:`deploy.ledger.identity.resolve_run_id`), its record
    written if it is new (never overwritten)."""
    run_id, _ = resolve_run_id(storage, settings)
    run = DeployRun(storage, run_id, settings)
    run.create(make_record(run_id, settings, storage, image=image, image_id=image_id, argv=argv))
    return run


def gpu_summary(gpus: Sequence[Any]) -> tuple[str, int]:
    """("NVIDIA L40S", 2) from a probe's GPUs; ("", 0) without any."""
    names = sorted({getattr(g, "name", "") for g in gpus} - {""})
    return (", ".join(names), len(gpus)) if gpus else ("", 0)
