"""The run record's data: the record (facts fixed at the first deploy), events, heartbeats; format versions.

Every object is JSON with a ``format`` field. Readers accept every format they know and upgrade it
to the current shape here, so a bucket written by an older version still lists:

- format 0 (before the field existed): one object ``runs/<id>.json`` (or ``runs/<id>/record.json``)
  with ``id``, ``started``, ``hosts`` (strings) and its ``events`` inline.
- format 1: ``runs/<id>/record.json`` plus one object per event and one heartbeat object per writer
  (:mod:`deploy.ledger.store` names the keys).

Example::

    event = Event.make("deployed", writer="deploy-laptop", host="root@10.0.0.5:22", price_per_hour=1.2)
    Event.from_dict(event.to_dict()) == event
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

FORMAT = 1
HEARTBEAT_FILE = "lightning_logs/heartbeat.json"
"""Where the training's heartbeat lands under its working directory: REMOTE_DIR in every runtime."""
"""The format this version writes."""

# What each event kind means for the host it names (cost: deploy.ledger.cost).
OPENING = frozenset({"deployed", "restarted", "started", "provisioned", "replaced", "resumed"})
"""Kinds that mean the host is (again) working for the run: billing hours start."""
CLOSING = frozenset({"stopped", "finished", "lost", "preempted", "terminated"})
"""Kinds that mean the host no longer works for the run: billing hours stop."""
ENDING = frozenset({"finished"})
"""Kinds that end the run itself: the next deploy starts a new run."""
KINDS = OPENING | CLOSING | {"exited", "note"}


def now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with microseconds and a ``Z``: sorts as text in time order."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: Any) -> datetime | None:
    """An ISO 8601 time (``Z`` or an offset, naive taken as UTC), or None when it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Record:
    """What the first deploy knew: never rewritten, so no writer can lose another's change."""

    run_id: str
    created: datetime
    command: str = ""
    image: str = ""
    image_id: str = ""
    commit: str = ""
    dirty: bool | None = None
    settings_digest: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    prefix: str = ""
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created"] = iso(self.created)
        return {"format": FORMAT, **{k: v for k, v in data.items() if k != "format"}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], run_id: str = "") -> "Record":
        """Any known format; a format-0 record keeps its ``started`` as ``created``."""
        version = int(data.get("format", 0) or 0)
        created = parse_time(data.get("created") or data.get("started")) or datetime(1970, 1, 1, tzinfo=timezone.utc)
        return cls(run_id=str(data.get("run_id") or data.get("id") or run_id), created=created,
                   command=str(data.get("command") or ""), image=str(data.get("image") or ""),
                   image_id=str(data.get("image_id") or ""), commit=str(data.get("commit") or ""),
                   dirty=data.get("dirty"), settings_digest=str(data.get("settings_digest") or ""),
                   settings={str(k): str(v) for k, v in (data.get("settings") or {}).items()},
                   prefix=str(data.get("prefix") or ""), format=version)


@dataclass(frozen=True)
class Event:
    """One thing that happened to a run, written once as its own object by one writer."""

    kind: str
    at: datetime
    writer: str
    host: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, kind: str, writer: str, host: str = "", at: datetime | None = None, **data: Any) -> "Event":
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; one of {', '.join(sorted(KINDS))}")
        return cls(kind=kind, at=at or now(), writer=writer, host=host,
                   data={k: v for k, v in data.items() if v is not None})

    @property
    def price_per_hour(self) -> float | None:
        value = self.data.get("price_per_hour")
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": self.kind, "at": iso(self.at), "writer": self.writer, "host": self.host,
                "data": self.data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Event | None":
        """An event of any known format, or None when the object is not one (it is skipped, not fatal)."""
        at = parse_time(data.get("at") or data.get("time"))
        kind = data.get("kind") or data.get("event")
        if at is None or not isinstance(kind, str):
            return None
        extra = data.get("data")
        if not isinstance(extra, dict):  # format 0 kept the details beside the kind
            extra = {k: v for k, v in data.items() if k not in ("kind", "event", "at", "time", "writer", "host")}
        return cls(kind=kind, at=at, writer=str(data.get("writer") or ""), host=str(data.get("host") or ""),
                   data=extra)


@dataclass(frozen=True)
class Heartbeat:
    """The training's latest progress, from the callback on rank zero (deploy.training.heartbeat)."""

    at: datetime
    writer: str = ""
    host: str = ""
    step: int | None = None
    epoch: int | None = None
    max_steps: int | None = None
    max_epochs: int | None = None
    steps_per_second: float | None = None
    eta_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = iso(self.at)
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Heartbeat | None":
        at = parse_time(data.get("at"))
        if at is None:
            return None
        num = lambda key, kind=int: kind(data[key]) if isinstance(data.get(key), (int, float)) else None  # noqa: E731
        metrics = {str(k): float(v) for k, v in (data.get("metrics") or {}).items() if isinstance(v, (int, float))}
        return cls(at=at, writer=str(data.get("writer") or ""), host=str(data.get("host") or ""), step=num("step"),
                   epoch=num("epoch"), max_steps=num("max_steps"), max_epochs=num("max_epochs"),
                   steps_per_second=num("steps_per_second", float), eta_seconds=num("eta_seconds", float),
                   metrics=metrics, pid=num("pid"))

    def age(self, moment: datetime | None = None) -> float:
        return ((moment or now()) - self.at).total_seconds()

    def progress(self) -> str:
        """``step 1200/5000, epoch 3/10, 4.2 steps/s, ETA 15 min, loss 0.312``."""
        parts = []
        if self.step is not None:
            parts.append(f"step {self.step}" + (f"/{self.max_steps}" if self.max_steps else ""))
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}" + (f"/{self.max_epochs}" if self.max_epochs else ""))
        if self.steps_per_second:
            parts.append(f"{self.steps_per_second:.3g} steps/s")
        if self.eta_seconds is not None:
            parts.append(f"ETA {duration(self.eta_seconds)}")
        parts += [f"{k} {v:.4g}" for k, v in list(self.metrics.items())[:3]]
        return ", ".join(parts) or "no step yet"


def duration(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
