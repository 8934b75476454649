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
import json
import math
import os
import re
import secrets
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
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
class Unreadable:
    """An object of a run that could not be read, and what is wrong with it.

    ``str()`` is the sentence a person reads: ``s3://b/p/runs/r1/record.json is not JSON``.
    """

    what: str  # record, event or heartbeat
    url: str
    problem: str

    def __str__(self) -> str:
        return f"{self.url} {self.problem}"


@dataclass(frozen=True)
class RunData:
    """Everything in the bucket about one run: its record, events (oldest first) and heartbeats.

    ``unreadable``: the run's objects that are not what a writer writes (not JSON, the wrong shape, a
    field of the wrong type); they are left out of the rest, so a view shows what can be read.
    """

    record: Record
    events: tuple[Event, ...] = ()
    heartbeats: tuple[Heartbeat, ...] = ()
    keys: tuple[str, ...] = field(default_factory=tuple)
    unreadable: tuple[Unreadable, ...] = ()

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def record_unreadable(self) -> Unreadable | None:
        """Why the run's own record could not be read, or None."""
        return next((u for u in self.unreadable if u.what == "record"), None)


# ----------------------------------------------------------------------------- reading a run back
#
# Anyone who can write to the bucket can write anything under runs/: every object is checked before
# the model sees it, and one that fails is set aside as Unreadable with a sentence, never raised.

MAX_DEPTH = 32
"""Nesting deeper than this is not a ledger object (ours nest three levels)."""
MAX_NUMBER = 1e15
"""Numbers beyond this are not a step, a price or a duration: they would overflow a sum or a date."""
_TEXT, _WHOLE, _NUMBER, _FLAG, _OBJECT = "text", "whole", "number", "flag", "object"
_FIELDS: dict[str, dict[str, str]] = {
    "record": {"format": _WHOLE, "run_id": _TEXT, "id": _TEXT, "created": _TEXT, "started": _TEXT,
               "command": _TEXT, "image": _TEXT, "image_id": _TEXT, "commit": _TEXT, "dirty": _FLAG,
               "settings_digest": _TEXT, "settings": _OBJECT, "prefix": _TEXT},
    "event": {"format": _WHOLE, "kind": _TEXT, "event": _TEXT, "at": _TEXT, "time": _TEXT, "writer": _TEXT,
              "host": _TEXT, "data": _OBJECT},
    "heartbeat": {"format": _WHOLE, "at": _TEXT, "writer": _TEXT, "host": _TEXT, "step": _NUMBER,
                  "epoch": _NUMBER, "max_steps": _NUMBER, "max_epochs": _NUMBER, "steps_per_second": _NUMBER,
                  "eta_seconds": _NUMBER, "metrics": _OBJECT, "pid": _NUMBER},
}
"""The fields each model reads, and their JSON type (a field may also be absent or null)."""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _fits(value: Any, kind: str) -> bool:
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _FLAG:
        return isinstance(value, bool)
    if kind == _OBJECT:
        return isinstance(value, dict)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if kind == _WHOLE else True


_WANTED = {_TEXT: "a string", _WHOLE: "a whole number", _NUMBER: "a number", _FLAG: "true/false",
           _OBJECT: "an object"}


def odd_value(data: Any, depth: int = 0) -> str | None:
    """What makes ``data`` unfit anywhere inside it: too deep, or a number no writer writes."""
    if depth > MAX_DEPTH:
        return f"nests deeper than {MAX_DEPTH} levels"
    if isinstance(data, float) and not math.isfinite(data):
        return "holds NaN or Infinity, which is not JSON"
    if isinstance(data, (int, float)) and not isinstance(data, bool) and abs(data) > MAX_NUMBER:
        return f"holds the number {str(data)[:24]}, beyond what any field can hold"
    children = data.values() if isinstance(data, dict) else data if isinstance(data, list) else ()
    for child in children:
        problem = odd_value(child, depth + 1)
        if problem:
            return problem
    return None


def check_shape(data: Any, what: str) -> str | None:
    """What is wrong with ``data`` as a ``what`` (record, event, heartbeat) object, or None when it fits.

    >>> check_shape({"kind": "deployed", "at": 5}, "event")
    'is not an event: its "at" is a number, not a string'
    """
    article = "an" if what[0] in "aeiou" else "a"
    if not isinstance(data, dict):
        return f"is {_json_type(data).replace('a ', 'a JSON ', 1)}, not {article} {what} (a JSON object)"
    odd = odd_value(data)
    if odd:
        return odd
    for name, kind in _FIELDS[what].items():
        value = data.get(name)
        if value is not None and not _fits(value, kind):
            return f"is not {article} {what}: its {json.dumps(name)} is {_json_type(value)}, not {_WANTED[kind]}"
    return None


def _time_fits(moment: datetime) -> bool:
    """A time a run can have: later sums and ``iso`` cannot overflow on it."""
    try:
        return 1900 <= moment.astimezone(timezone.utc).year <= 9000
    except OverflowError:
        return False


def _model(data: Any, what: str) -> tuple[Any, str | None]:
    """(the model object, None) or (None, what is wrong); ``data`` from the bucket, any shape."""
    problem = check_shape(data, what)
    if problem:
        return None, problem
    try:
        if what == "record":
            made: Any = Record.from_dict(data)
        elif what == "event":
            made = Event.from_dict(data)
        else:
            made = Heartbeat.from_dict(data)
    except (TypeError, ValueError, AttributeError, OverflowError):  # a shape check missed it
        article = "an" if what[0] in "aeiou" else "a"
        return None, f"could not be read as {article} {what} (a field of the wrong type or out of range)"
    if made is None:
        return None, f"is not {'an' if what[0] in 'aeiou' else 'a'} {what}: it has no time" + \
            (" or no kind" if what == "event" else "")
    moment = made.created if what == "record" else made.at
    if not _time_fits(moment):
        return None, f"is not a usable {what}: its time {moment.isoformat()[:32]} is out of range"
    return made, None


Loaded = tuple[Any, "str | None"]
"""(JSON, None) for an object that read as JSON, (None, what is wrong) for one that did not."""


def load_json(storage: Storage, key: str) -> Loaded:
    """A listed object's JSON, or what is wrong with it; never raises for its content."""
    try:
        found = get_json(storage, key)
    except RecursionError:  # json's own limit, below a pathological nesting
        return None, f"nests deeper than {MAX_DEPTH} levels"
    if found is None:  # the key was listed, so it exists: its body did not parse
        return None, "is not JSON"
    return found[0], None


def _list_keys(storage: Storage, prefix: str) -> list[str]:
    return [o.key for o in storage.list(prefix)]


def read_run(storage: Storage, run_id: str, workers: int = 8) -> RunData | None:
    """One run as it is in the bucket now (any format), or None when there is no such run.

    Objects that are not what a writer writes are in :attr:`RunData.unreadable`, never raised."""
    keys = _list_keys(storage, run_prefix(storage, run_id))
    if not keys:
        return _read_format0(storage, run_id)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
        loaded = dict(zip(keys, pool.map(lambda k: load_json(storage, k), keys)))
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
        loaded = dict(zip(every, pool.map(lambda k: load_json(storage, k), every)))
    found = [assemble(storage, rid, {k: loaded[k] for k in ks}) for rid, ks in keys.items()]
    found += [r for r in (_read_format0(storage, rid) for rid in sorted(wanted - set(keys))) if r is not None]
    return found


def assemble(storage: Storage, run_id: str, loaded: dict[str, Loaded]) -> RunData:
    """A run from its objects, ``{key: (JSON, None) or (None, what is wrong)}``.

    Keys that are not ledger objects are skipped; ledger objects that do not read are set aside in
    :attr:`RunData.unreadable`. The run id is the folder's, whatever the record says.
    """
    prefix = run_prefix(storage, run_id)
    record: Record | None = None
    events, beats, unreadable = [], [], []
    for key, (data, problem) in sorted(loaded.items()):
        if key == prefix + RECORD:
            what = "record"
        elif key.startswith(prefix + EVENTS + "/"):
            what = "event"
        elif key.startswith(prefix + HEARTBEATS + "/"):
            what = "heartbeat"
        else:
            continue
        made = None
        if problem is None:
            made, problem = _model(data, what)
        if problem is not None:
            unreadable.append(Unreadable(what, storage.url(key), problem))
        elif what == "record":
            record = replace(made, run_id=run_id)
        else:
            (events if what == "event" else beats).append(made)
    if record is None:  # none, or unreadable (a watcher wrote first): dated by its first event
        record = Record(run_id=run_id, created=min((e.at for e in events), default=now()), format=FORMAT_MISSING)
    return RunData(record=record, events=tuple(sorted(events, key=lambda e: e.at)),
                   heartbeats=tuple(sorted(beats, key=lambda b: b.at)), keys=tuple(sorted(loaded)),
                   unreadable=tuple(unreadable))


FORMAT_MISSING = -1
"""``Record.format`` of a run whose record.json is missing (events only)."""


def _read_format0(storage: Storage, run_id: str) -> RunData | None:
    """Format 0: the whole run in ``runs/<id>.json``, events inline; None when there is no such object."""
    key = storage.key(RUNS, f"{check_run_id(run_id)}.json")
    data, problem = load_json(storage, key)
    if problem is not None and storage.head(key) is None:  # "not JSON" from an object that is not there
        return None
    record, problem = _model(data, "record") if problem is None else (None, problem)
    if record is None:
        return RunData(record=Record(run_id=run_id, created=now(), format=FORMAT_MISSING), keys=(key,),
                       unreadable=(Unreadable("record", storage.url(key), problem or "is not a run record"),))
    inline = data.get("events")
    events, unreadable = [], []
    if inline is not None and not isinstance(inline, list):
        unreadable.append(Unreadable("event", storage.url(key), f'has "events" that are {_json_type(inline)}, '
                                                                "not a list"))
        inline = []
    for n, item in enumerate(inline or []):
        event, why = _model(item, "event")
        if event is None:
            unreadable.append(Unreadable("event", f"{storage.url(key)} (event {n + 1})", why or ""))
        else:
            events.append(event)
    return RunData(record=replace(record, run_id=run_id), events=tuple(sorted(events, key=lambda e: e.at)),
                   keys=(key,), unreadable=tuple(unreadable))
