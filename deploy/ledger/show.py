"""What ``fab runs.show RUN`` prints: the record, the events as a timeline, cost per host, checkpoints.

Pure formatting of a :class:`~deploy.ledger.store.RunData` (plus the checkpoints found for it), so
the tests check the text without a bucket. Everything in it was written to the bucket by someone:
each line goes through :func:`deploy.hosts.text.printable` (no escapes, controls or bidi overrides,
one line stays one line), and a ``fab runs`` row goes to a rich table as text, never as markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from deploy.hosts.text import printable
from deploy.ledger.cost import run_cost
from deploy.ledger.index import summarize
from deploy.ledger.model import FORMAT, Event, duration, iso, now
from deploy.ledger.store import FORMAT_MISSING, RunData

_SKIP_DATA = ("price_per_hour",)


def _event_detail(event: Event) -> str:
    parts = [f"{k}={v}" for k, v in event.data.items() if k not in _SKIP_DATA]
    if event.price_per_hour is not None:
        parts.append(f"${event.price_per_hour:.2f}/h")
    return " ".join(parts)


def timeline(run: RunData) -> list[str]:
    """``06:02:15  +0 s        deployed   root@gpu-a:22  gpu=NVIDIA L40S gpus=1 $1.20/h  (deploy-laptop)``."""
    if not run.events:
        return ["  (no events yet)"]
    start = run.events[0].at
    lines = []
    for event in run.events:
        offset = f"+{duration((event.at - start).total_seconds())}"
        lines.append(printable(f"  {event.at:%Y-%m-%d %H:%M:%S}  {offset:<12} {printable(event.kind):<11} "
                               f"{printable(event.host) or '-':<24} {_event_detail(event)}  ({event.writer})").rstrip())
    return lines


def _format_note(run: RunData) -> str:
    version = run.record.format
    if run.record_unreadable:
        return "  (record unreadable: events only)"
    if version == FORMAT_MISSING:
        return "  (no record.json: events only)"
    return "" if version == FORMAT else f"  (record format {version})"


def describe_run(run: RunData, checkpoints: Sequence[Any] = (), moment: datetime | None = None,
                 prices: dict[str, float] | None = None) -> list[str]:
    """The whole ``fab runs.show`` text."""
    moment = moment or now()
    record, summary = run.record, summarize(run, moment)
    source = record.image + (f" ({record.image_id[:19]})" if record.image_id else "")
    if record.commit:
        source += ("; " if source else "") + f"git {record.commit[:12]}" + (" (dirty)" if record.dirty else "")
    lines = [f"run         {run.run_id}" + _format_note(run)]
    if run.record_unreadable:
        lines.append(f"record      {run.record_unreadable}; the rest is read from the run's other objects")
    lines += [f"state       {summary['state']}, {summary['restarts']} restart(s)",
             f"created     {iso(record.created)} ({duration((moment - record.created).total_seconds())} ago)",
             f"command     {record.command or '?'}",
             f"source      {source or '?'}",
             f"settings    {record.settings_digest or '?'}"]
    lines += [f"            {k}={v}" for k, v in sorted(record.settings.items())]
    cost = run_cost(run.events, run.heartbeats, prices=prices)
    lines.append(f"cost        {cost.describe()} over {cost.hours:.2f} host-hours")
    for host in cost.hosts:
        price = f"${host.price_per_hour:.2f}/h" if host.price_per_hour is not None else "no price"
        lines.append(f"            {host.host}: {host.hours:.2f} h in {host.intervals} interval(s) at {price}")
    if run.heartbeats:
        beat = run.heartbeats[-1]
        lines.append(f"progress    {beat.progress()} ({duration(beat.age(moment))} ago, {beat.host or beat.writer})")
    lines.append("events")
    lines += timeline(run)
    lines.append("checkpoints" + ("" if checkpoints else "  none found for this run"))
    for info in checkpoints:
        age = duration((moment - info.uploaded).total_seconds()) + " ago" if info.uploaded else "?"
        lines.append(f"  step {info.step if info.step is not None else '?':<10} {info.name}  (uploaded {age})")
    others = [u for u in run.unreadable if u is not run.record_unreadable]
    if others:
        lines.append(f"unreadable  {len(others)} object(s) left out:")
        lines += [f"  {u}" for u in others]
    return [printable(line) for line in lines]


def run_json(run: RunData, checkpoints: Sequence[Any] = (), prices: dict[str, float] | None = None) -> dict[str, Any]:
    """``fab runs.show --json``: the record, summary, cost, events, heartbeats and checkpoints."""
    return {"record": run.record.to_dict() | {"format": run.record.format}, "summary": summarize(run),
            "cost": run_cost(run.events, run.heartbeats, prices=prices).to_dict(),
            "events": [e.to_dict() for e in run.events], "heartbeats": [h.to_dict() for h in run.heartbeats],
            "checkpoints": [c.to_dict() for c in checkpoints],
            "unreadable": [{"what": u.what, "url": u.url, "problem": u.problem} for u in run.unreadable]}


TABLE_COLUMNS = ("run", "created", "state", "hosts", "gpu", "restarts", "step", "hours", "cost")


def table_row(summary: dict[str, Any]) -> tuple[str, ...]:
    """One ``fab runs`` row from an index summary: plain strings, as stored (``tasks/runs.py`` shows each through
    :func:`deploy.hosts.text.rich_text`)."""
    hosts = summary.get("hosts") or []
    gpus = sorted({f"{h.get('gpus') or '?'}x {h['gpu']}" for h in hosts if h.get("gpu")})
    created = (summary.get("created") or "")[:16].replace("T", " ")
    step = summary.get("step")
    state = str(summary.get("state")) + (", record unreadable" if summary.get("record_problem") else "")
    return (str(summary.get("run_id")), created, state, str(len(hosts)), ", ".join(gpus) or "-",
            str(summary.get("restarts", 0)), "-" if step is None else str(step),
            f"{float(summary.get('hours') or 0):.2f}", str(summary.get("cost") or "?"))
