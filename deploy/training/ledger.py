"""The training side's writer of the run ledger: events and heartbeats of one run, without torch.

The entrypoint records ``started`` before the training command and ``finished`` (exit 0) or
``exited`` with the code after it; the :class:`~deploy.training.heartbeat.Heartbeat` callback adds
its notes and heartbeats. It writes the objects ``deploy.ledger.store.RunLedger`` writes (format 1:
``runs/<run-id>/events/<time>-<writer>-<pid>-<n>.json``, ``runs/<run-id>/heartbeat/<writer>.json``,
then a new ETag for ``runs/_touched/<run-id>``) with the bucket client alone, because the training
image carries no operator code; tests/unit/test_training_heartbeat.py reads them with deploy.ledger.

Nothing is recorded without ``RUN_ID`` (deploy sets it) or with S3 sync off, and a failing bucket
never stops or delays training by more than a few seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import socket
import threading
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError

from deploy.errors import DeployError
from deploy.settings import Settings, load_settings
from deploy.storage import Storage

RUN_HOST_ENV = "RUN_HOST"
"""How the operator addresses this host (``root@10.0.0.5:22``): deploy puts it in the host's .env."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_COUNTER = itertools.count()


def iso_now(moment: datetime | None = None) -> str:
    """UTC ISO 8601 with microseconds and a ``Z``, as deploy.ledger writes times."""
    return (moment or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TrainingLedger:
    """Events and heartbeats of one run, written by the training side (format 1 of deploy.ledger)."""

    def __init__(self, storage: Storage, run_id: str, host: str = "", role: str = "train") -> None:
        self.storage = storage
        self.run_id = run_id
        self.host = host
        self.writer = _UNSAFE.sub("-", f"{role}-{socket.gethostname()}")[:64]

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

    def _put(self, key: str, data: dict[str, Any], new: bool = False) -> None:
        args: dict[str, Any] = {"Bucket": self.storage.bucket, "Key": key, "ContentType": "application/json",
                                "Body": json.dumps(data, sort_keys=True, separators=(",", ":")).encode()}
        if new:
            args["IfNoneMatch"] = "*"  # the key is unique; the condition only guards against a collision
        try:
            self.storage.client.put_object(**args)
        except ClientError as exc:  # a provider without conditional writes: the unique key is enough
            if not new or exc.response.get("Error", {}).get("Code") not in ("NotImplemented", "501", "InvalidArgument"):
                raise
            args.pop("IfNoneMatch")
            self.storage.client.put_object(**args)

    def _touch(self) -> None:
        self._put(self.storage.key("runs", "_touched", self.run_id), {"nonce": secrets.token_hex(8)})

    def event(self, kind: str, **data: Any) -> None:
        """One event object (``runs/<id>/events/<time>-<writer>-<pid>-<n>.json``), then the run's touch."""
        moment = datetime.now(timezone.utc)
        name = f"{moment:%Y%m%dT%H%M%S.%fZ}-{self.writer}-{os.getpid()}-{next(_COUNTER)}.json"
        body = {"format": 1, "kind": kind, "at": iso_now(moment), "writer": self.writer, "host": self.host,
                "data": {k: v for k, v in data.items() if v is not None}}
        self._put(self.storage.key("runs", self.run_id, "events", name), body, new=True)
        self._touch()

    def heartbeat(self, beat: dict[str, Any]) -> None:
        """Replace this writer's heartbeat object, then the run's touch."""
        body = {"format": 1, **beat, "writer": self.writer, "host": self.host}
        self._put(self.storage.key("runs", self.run_id, "heartbeat", f"{self.writer}.json"), body)
        self._touch()


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
