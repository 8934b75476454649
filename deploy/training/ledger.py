"""The training side's view of the run ledger: the same writer as the operator's, with this host's name.

The entrypoint records ``started`` before the training command and ``finished`` (exit 0) or
``exited`` with the code after it; the :class:`~deploy.training.heartbeat.Heartbeat` callback adds
its notes and heartbeats; a pod's backstop records its own ``terminated``. Every object is written by
:class:`deploy.ledger.store.RunLedger` (the one writer: key layout, event names, the conditional
create, the run's touch), which needs only the standard library, the bucket and the model, so the
training image carries it (``.dockerignore`` lets exactly ``deploy/ledger/{__init__,model,store}.py``
in). This module adds what the host knows: ``RUN_ID``, ``RUN_HOST`` and whether S3 sync is on.

Nothing is recorded without ``RUN_ID`` (deploy sets it) or with S3 sync off, and a failing bucket
never stops or delays training by more than a few seconds.
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import datetime, timezone
from typing import Any

from deploy.errors import DeployError
from deploy.ledger.model import Heartbeat, iso
from deploy.ledger.store import RunLedger, writer_name
from deploy.settings import Settings, load_settings
from deploy.storage import Storage

RUN_HOST_ENV = "RUN_HOST"
"""How the operator addresses this host (``root@10.0.0.5:22``): deploy puts it in the host's .env."""


def iso_now(moment: datetime | None = None) -> str:
    """UTC ISO 8601 with microseconds and a ``Z``, as deploy.ledger writes times."""
    return iso(moment or datetime.now(timezone.utc))


class TrainingLedger:
    """Events and heartbeats of one run from the training side: a :class:`RunLedger` that names this host."""

    def __init__(self, storage: Storage, run_id: str, host: str = "", role: str = "train") -> None:
        self.run = RunLedger(storage, run_id, writer_name(role))
        self.storage = storage
        self.run_id = run_id
        self.host = host

    @property
    def writer(self) -> str:
        return self.run.writer

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "TrainingLedger | None":
        """The run's ledger when ``RUN_ID`` is set and S3 sync is on, else None (nothing is recorded)."""
        settings = settings or load_settings()
        if not (settings.run_id and settings.enable_s3_sync):
            return None
        try:
            storage = Storage.from_settings(settings)
        except DeployError:
            return None
        return cls(storage, settings.run_id, os.environ.get(RUN_HOST_ENV, "") or socket.gethostname())

    def event(self, kind: str, **data: Any) -> None:
        """One event object, then the run's touch."""
        self.run.event(kind, host=self.host, **data)

    def heartbeat(self, beat: dict[str, Any]) -> None:
        """Replace this writer's heartbeat object (``beat`` as the Heartbeat callback makes it), then the touch."""
        parsed = Heartbeat.from_dict({**beat, "host": self.host})
        if parsed is not None:
            self.run.heartbeat(parsed)


def record_in_background(ledger: TrainingLedger | None, kind: str, timeout: float = 10.0, **data: Any) -> bool:
    """Write one event from a daemon thread, waiting at most ``timeout`` s: S3 trouble never holds training."""
    if ledger is None:
        return False
    done: list[bool] = []

    def work() -> None:
        try:
            ledger.event(kind, **data)
            done.append(True)
        except Exception as exc:  # noqa: BLE001 - the ledger is a record, never a reason to stop training
            print(f"gpu-deploy: could not record {kind!r} in the run ledger: {exc}", flush=True)

    thread = threading.Thread(target=work, name=f"ledger-{kind}", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(done)
