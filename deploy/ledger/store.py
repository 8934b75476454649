"""The run ledger in the bucket: where each object lives, the writer, and reading one run back.

Layout under ``s3://$S3_BUCKET/$S3_PREFIX/``::

    runs/<run-id>/record.json                       facts of the first deploy; created once (If-None-Match)
    runs/<run-id>/events/<time>-<writer>-<n>.json   one object per event, never rewritten
    runs/<run-id>/heartbeat/<writer>.json           the newest heartbeat of one writer (only it writes it)
    runs/_touched/<run-id>                          rewritten (new random body) after every write to the run
    runs/_index.json                                a summary of every run: a cache (deploy.ledger.index)
    runs/<run-id>.json                              format 0: an older single-object record (read only)

No object is ever read, changed and written back by two writers: an event is a new key (time,
writer name, process id and a counter make it unique), a heartbeat key has one writer, and the
record is created with ``If-None-Match: *``. So a deploy, a watcher and the training side can write
at once and no event is lost. After each write a writer rewrites the run's ``_touched`` object with
a new random body, so its ETag changes: one listing of ``runs/_touched/`` tells a reader which runs
changed since its index was made (:mod:`deploy.ledger.index`). Checkpoints and logs stay where older scripts put them
(``checkpoints/``, ``logs/version_N/``); a checkpoint belongs to a run by its ``run`` metadata or,
without it, by its upload time (:func:`deploy.ledger.index.run_checkpoints`).

Example::

    ledger = RunLedger(storage, "20261130-0602-a1b2", writer="watch")
    ledger.event("provisioned", host="root@203.0.113.7:40022", price_per_hour=0.79, pod="abc123")
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from deploy.errors import StorageError
from deploy.ledger.model import Event, Heartbeat, Record, now
from deploy.storage import Storage
# The JSON helpers live in storage (the training side may import deploy.storage, not deploy.ledger);
# they stay importable from here for the watcher, the index and older callers.
from deploy.storage.objects import (UNSUPPORTED, ConditionFailed, _precondition,  # noqa: F401
                                    _put_unconditionally, _unsupported, get_json, put_json)

RUNS = "runs"
RECORD = "record.json"
EVENTS = "events"
HEARTBEATS = "heartbeat"
INDEX = "_index.json"
TOUCHED = "_touched"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_COUNTER = itertools.count()
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_run_id(run_id: str) -> str:
    """A run id is one path segment of letters, digits, ``.``, ``_`` and ``-`` (so it is a safe key)."""
    if not _RUN_ID.match(run_id or "") or run_id.endswith(".json"):
        raise StorageError(f"{run_id!r} is not a run id (letters, digits, '.', '_' and '-', up to 128); "
                           "`fab runs` lists them.")
    return run_id


def writer_name(role: str) -> str:
    """``train-gpu-a``: the role and this machine, safe for a key."""
    return _UNSAFE.sub("-", f"{role}-{socket.gethostname()}")[:64]


def run_prefix(storage: Storage, run_id: str) -> str:
    return storage.key(RUNS, check_run_id(run_id)) + "/"


def event_name(event: Event, writer: str) -> str:
    """``<time>-<writer>-<pid>-<n>.json``: unique per writer process, and in time order as text."""
    return f"{event.at:%Y%m%dT%H%M%S.%fZ}-{writer}-{os.getpid()}-{next(_COUNTER)}.json"


def touch(storage: Storage, run_id: str) -> None:
    """Mark ``run_id`` as changed: a new random body gives ``runs/_touched/<run-id>`` a new ETag."""
    put_json(storage, storage.key(RUNS, TOUCHED, run_id), {"nonce": secrets.token_hex(8)})


class RunLedger:
    """Writes one run's record, events and heartbeats; safe beside any number of other writers.

    The training side writes the same objects with its own small writer (deploy.training.heartbeat),
    since the image carries no operator code; tests/unit/test_ledger.py reads what it writes.
    """

    def __init__(self, storage: Storage, run_id: str, writer: str) -> None:
        self.storage = storage
        self.run_id = check_run_id(run_id)
        self.writer = _UNSAFE.sub("-", writer)[:64] or "writer"

    def key(self, *parts: str) -> str:
        return self.storage.key(RUNS, self.run_id, *parts)

    def create(self, record: Record) -> bool:
        """Write the record unless the run already has one; True when this call created it."""
        try:
            put_json(self.storage, self.key(RECORD), record.to_dict(), if_none_match=True)
        except ConditionFailed:
            return False
        touch(self.storage, self.run_id)
        return True

    def event(self, kind: str, host: str = "", **data: Any) -> Event:
        """Append one event as its own object, then mark the run changed."""
        event = Event.make(kind, writer=self.writer, host=host, **data)
        put_json(self.storage, self.key(EVENTS, event_name(event, self.writer)), event.to_dict(), if_none_match=True)
        touch(self.storage, self.run_id)
        return event

    def heartbeat(self, beat: Heartbeat) -> None:
        """Replace this writer's heartbeat object (no other writer writes this key)."""
        data = beat.to_dict()
        data["writer"] = self.writer
        put_json(self.storage, self.key(HEARTBEATS, f"{self.writer}.json"), data)
        touch(self.storage, self.run_id)


@dataclass(frozen=True)
class RunData:
    """Everything in the bucket about one run: its record, events (oldest first) and heartbeats."""

    record: Record
    events: tuple[Event, ...] = ()
    heartbeats: tuple[Heartbeat, ...] = ()
    keys: tuple[str, ...] = field(default_factory=tuple)

    @property
    def run_id(self) -> str:
        return self.record.run_id


def _list_keys(storage: Storage, prefix: str) -> list[str]:
    return [o.key for o in storage.list(prefix)]


def read_run(storage: Storage, run_id: str, workers: int = 8) -> RunData | None:
    """One run as it is in the bucket now (any format), or None when there is no such run."""
    keys = _list_keys(storage, run_prefix(storage, run_id))
    if not keys:
        return _read_format0(storage, run_id)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
        loaded = dict(zip(keys, pool.map(lambda k: get_json(storage, k), keys)))
    return assemble(storage, run_id, loaded)


def read_runs(storage: Storage, run_ids: Iterable[str], workers: int = 32) -> list[RunData]:
    """Many runs at once: one listing of ``runs/`` instead of one per run, then every object in parallel."""
    wanted = set(run_ids)
    prefix = storage.key(RUNS) + "/"
    keys: dict[str, list[str]] = {}
    for key in _list_keys(storage, prefix):
        run_id = key[len(prefix):].split("/", 1)[0]
        if run_id in wanted and "/" in key[len(prefix):]:
            keys.setdefault(run_id, []).append(key)
    every = [k for ks in keys.values() for k in ks]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(every) or 1))) as pool:
        loaded = dict(zip(every, pool.map(lambda k: get_json(storage, k), every)))
    found = [assemble(storage, rid, {k: loaded[k] for k in ks}) for rid, ks in keys.items()]
    found += [r for r in (_read_format0(storage, rid) for rid in sorted(wanted - set(keys))) if r is not None]
    return found


def assemble(storage: Storage, run_id: str, loaded: dict[str, tuple[Any, str] | None]) -> RunData:
    """A run from its objects, ``{key: (JSON, ETag) or None}``; objects that are not ledger objects are skipped."""
    prefix = run_prefix(storage, run_id)
    record_data = loaded.get(prefix + RECORD)
    record = (Record.from_dict(record_data[0], run_id) if record_data and isinstance(record_data[0], dict)
              else Record(run_id=run_id, created=now(), format=FORMAT_MISSING))
    events, beats = [], []
    for key, found in loaded.items():
        if found is None or not isinstance(found[0], dict):
            continue
        if key.startswith(prefix + EVENTS + "/") and (event := Event.from_dict(found[0])) is not None:
            events.append(event)
        elif key.startswith(prefix + HEARTBEATS + "/") and (beat := Heartbeat.from_dict(found[0])) is not None:
            beats.append(beat)
    if record.format == FORMAT_MISSING and events:  # no record (a watcher wrote first): dated by its first event
        record = Record(run_id=run_id, created=min(e.at for e in events), format=FORMAT_MISSING)
    return RunData(record=record, events=tuple(sorted(events, key=lambda e: e.at)),
                   heartbeats=tuple(sorted(beats, key=lambda b: b.at)), keys=tuple(sorted(loaded)))


FORMAT_MISSING = -1
"""``Record.format`` of a run whose record.json is missing (events only)."""


def _read_format0(storage: Storage, run_id: str) -> RunData | None:
    """Format 0: the whole run in ``runs/<id>.json``, events inline."""
    found = get_json(storage, storage.key(RUNS, f"{check_run_id(run_id)}.json"))
    if found is None or not isinstance(found[0], dict):
        return None
    data = found[0]
    record = Record.from_dict(data, run_id)
    events = [e for e in (Event.from_dict(item) for item in data.get("events") or [] if isinstance(item, dict)) if e]
    return RunData(record=record, events=tuple(sorted(events, key=lambda e: e.at)),
                   keys=(storage.key(RUNS, f"{run_id}.json"),))

