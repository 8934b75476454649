"""Listing runs fast: a summary per run, and ``runs/_index.json``, a cache of them that readers keep.

A summary is computed from the run's objects alone (:func:`summarize`), so anyone can recompute it.
Writers never touch the index: after each write they give ``runs/_touched/<run-id>`` a new ETag
(:func:`deploy.ledger.store.touch`). A reader (``fab runs``):

1. reads the index (one GET): per run, its summary and the ``_touched`` ETag seen *before* the run
   was read for it;
2. lists ``runs/`` with a delimiter (the run folders, and format-0 ``<id>.json`` objects) and
   ``runs/_touched/`` (one key per run: a thousand runs are one page);
3. reads in full only the runs whose ETag differs from the index's, or that the index lacks;
4. merges what it learned back with a conditional write (``If-Match`` on the ETag it read; on a
   conflict it reads again and merges again; per run the summary that saw more events wins).

A write that lands after step 2 changes the ETag after the reader looked, so the next reader
re-reads that run: the index can lag by one read, never lose a change. Where a provider lacks
conditional writes the merge falls back to a plain write; it is a cache, so the worst case is a
re-read. Figures: docs/benchmarks.md.

Nothing in the bucket is trusted to have the shape we wrote: a run's unreadable objects are counted in
its summary (and the record's sentence kept), an index entry of the wrong shape is read again from
the run, and a folder under ``runs/`` that is not a run id is not a run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy.ledger.cost import run_cost
from deploy.ledger.model import CLOSING, ENDING, OPENING, iso, now, parse_time
from deploy.errors import StorageError
from deploy.ledger.store import (INDEX, RUNS, TOUCHED, ConditionFailed, RunData, check_run_id, odd_value,
                                  get_json, put_json, read_run, read_runs)
from deploy.storage import CHECKPOINTS, Storage
from deploy.storage.checkpoints import CHECKPOINT_SUFFIX, CheckpointInfo, sort_checkpoints

INDEX_FORMAT = 1
RETRIES = 8
SILENT_AFTER = 600.0
"""Seconds without a sign of life after which an open run shows as ``silent`` rather than ``running``."""


def state_of(run: RunData, moment: datetime | None = None) -> tuple[str, bool]:
    """(state for people, open): ``finished``, ``failed (exit 1)``, ``stopped``, ``lost``, ``running``,
    ``silent``; open while some host has no closing event (its cost still grows)."""
    hours_open = _open_hosts(run)
    last = run.events[-1] if run.events else None
    if any(e.kind in ENDING for e in run.events):
        return "finished", bool(hours_open)
    if hours_open:
        seen = last_seen(run)
        if last is not None and last.kind == "exited":
            return f"failed (exit {last.data.get('code', '?')})", True
        if seen is not None and ((moment or now()) - seen).total_seconds() > SILENT_AFTER:
            return "silent", True
        return "running", True
    return (last.kind if last is not None else "created"), False


def _open_hosts(run: RunData) -> set[str]:
    opened: set[str] = set()
    for event in run.events:
        if not event.host:
            continue
        if event.kind in OPENING:
            opened.add(event.host)
        elif event.kind in CLOSING:
            opened.discard(event.host)
    return opened


def last_seen(run: RunData) -> datetime | None:
    moments = [e.at for e in run.events] + [h.at for h in run.heartbeats]
    return max(moments) if moments else None


def restarts(run: RunData) -> int:
    """Process starts after the first (crash restarts, redeploys, replacements); deploys when training
    reported no start."""
    starts = sum(1 for e in run.events if e.kind == "started")
    if not starts:
        starts = sum(1 for e in run.events if e.kind in ("deployed", "restarted", "replaced"))
    return max(0, starts - 1)


def hosts_of(run: RunData) -> list[dict[str, Any]]:
    """Every host the run used, in order of first use, with the GPU an event reported for it."""
    hosts: dict[str, dict[str, Any]] = {}
    for event in run.events:
        if event.host and event.kind in OPENING:
            entry = hosts.setdefault(event.host, {"host": event.host, "gpu": "", "gpus": 0})
            if event.data.get("gpu"):
                gpus = event.data.get("gpus")
                entry["gpu"] = str(event.data["gpu"])
                entry["gpus"] = int(gpus) if isinstance(gpus, (int, float)) and not isinstance(gpus, bool) else 0
    return list(hosts.values())


def summarize(run: RunData, moment: datetime | None = None) -> dict[str, Any]:
    """The row of ``fab runs`` for one run: plain JSON, computed from the run's objects only."""
    state, is_open = state_of(run, moment)
    cost = run_cost(run.events, run.heartbeats)
    beat = run.heartbeats[-1] if run.heartbeats else None
    seen = last_seen(run)
    record = run.record
    return {
        "run_id": run.run_id, "created": iso(record.created), "state": state, "open": is_open,
        "format": record.format, "image": record.image, "commit": record.commit, "dirty": record.dirty,
        "hosts": hosts_of(run), "restarts": restarts(run), "events": len(run.events),
        "hours": round(cost.hours, 6), "dollars": cost.dollars, "cost_complete": cost.complete,
        "cost": cost.describe(), "step": beat.step if beat else None,
        "last_seen": iso(seen) if seen else None, "unreadable": len(run.unreadable),
        "record_problem": str(run.record_unreadable) if run.record_unreadable else None,
    }


_SUMMARY = {"run_id": (str,), "created": (str, type(None)), "state": (str,), "hosts": (list,), "restarts": (int,),
            "events": (int,), "hours": (int, float), "cost": (str,), "step": (int, type(None)),
            "last_seen": (str, type(None)), "touched": (str,), "unreadable": (int,),
            "record_problem": (str, type(None))}


def usable_summary(entry: Any) -> bool:
    """An index entry of the shape :func:`summarize` writes (older entries may lack fields); anything else is
    read again from the run rather than shown."""
    if not isinstance(entry, dict) or odd_value(entry) is not None:
        return False
    if any(k in entry and (not isinstance(entry[k], t) or isinstance(entry[k], bool) and bool not in t)
           for k, t in _SUMMARY.items()):
        return False
    return all(isinstance(h, dict) and isinstance(h.get("host"), str) and isinstance(h.get("gpu", ""), str)
               and isinstance(h.get("gpus", 0), int) for h in entry.get("hosts") or [])


def _fresher(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """``b`` saw at least as much of the run as ``a``: more events, or as many and a later sign of life."""
    if a is None or not usable_summary(a):
        return True
    return (b.get("events", 0), b.get("last_seen") or "") >= (a.get("events", 0), a.get("last_seen") or "")


def _read_index(storage: Storage, key: str) -> tuple[dict[str, Any], str | None, bool]:
    """(the index's runs, its ETag, whether it exists); an index that does not read counts as empty."""
    try:
        found = get_json(storage, key)
    except RecursionError:
        found = None
    if found is None:
        return {}, None, storage.head(key) is not None
    runs = found[0].get("runs") if isinstance(found[0], dict) and found[0].get("format") == INDEX_FORMAT else None
    return (dict(runs) if isinstance(runs, dict) else {}), found[1], True



def merge_index(storage: Storage, summaries: dict[str, dict[str, Any]]) -> None:
    """Merge ``summaries`` into ``runs/_index.json`` with compare-and-swap; a fresher entry is kept."""
    key = storage.key(RUNS, INDEX)
    for _ in range(RETRIES):
        runs, etag, exists = _read_index(storage, key)
        runs = {rid: s for rid, s in runs.items() if usable_summary(s)}
        changed = {rid: s for rid, s in summaries.items() if _fresher(runs.get(rid), s) and runs.get(rid) != s}
        if not changed:
            return
        runs.update(changed)
        body = {"format": INDEX_FORMAT, "updated": iso(now()), "runs": runs}
        try:
            # An index that exists but does not read is replaced outright: it is a cache of what the runs hold.
            put_json(storage, key, body, if_none_match=not exists, if_match=etag)
            return
        except ConditionFailed:
            continue  # another writer won: read its version and merge again
    # Persistent contention: leave it; the next writer or reader merges again.


def _run_folders(storage: Storage) -> tuple[set[str], set[str]]:
    """(run ids with a folder, run ids with a format-0 object), from one delimited listing."""
    prefix = storage.key(RUNS) + "/"
    folders: set[str] = set()
    flat: set[str] = set()
    try:
        for page in storage.client.get_paginator("list_objects_v2").paginate(
                Bucket=storage.bucket, Prefix=prefix, Delimiter="/"):
            folders.update(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix):]
                if name.endswith(".json") and not name.startswith("_"):
                    flat.add(name[:-len(".json")])
    except (ClientError, BotoCoreError) as exc:
        raise storage.explain(exc, prefix) from exc
    runs = {f for f in folders | flat if not f.startswith("_") and _is_run_id(f)}
    return folders & runs, (flat - folders) & runs


def _is_run_id(name: str) -> bool:
    """A folder someone made under ``runs/`` with a name no run id has is not a run (and not an error)."""
    try:
        check_run_id(name)
    except StorageError:
        return False
    return True


def _touched(storage: Storage) -> dict[str, str]:
    """Run id -> the ETag of its ``_touched`` object (changes with every write to the run)."""
    prefix = storage.key(RUNS, TOUCHED) + "/"
    return {o.key[len(prefix):]: o.etag for o in storage.list(prefix)}


BULK = 32
"""More runs to read than this: one listing of ``runs/`` for all of them instead of one listing each."""


def _read_summaries(storage: Storage, todo: list[str], touched: dict[str, str], workers: int) -> dict[str, Any]:
    if len(todo) > BULK:
        runs = read_runs(storage, todo, workers=workers * 2)
    else:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
            runs = [r for r in pool.map(lambda rid: read_run(storage, rid, workers=4), todo) if r is not None]
    return {r.run_id: {**summarize(r), "touched": touched.get(r.run_id, "")} for r in runs}


def list_runs(storage: Storage, workers: int = 16, refresh: bool = False, save: bool = True) -> list[dict[str, Any]]:
    """Every run's summary, newest first; reads in full only the runs that changed since the index.

    ``save=False`` (a dry run) leaves the index as it is, even when it learned something."""
    index, _, _ = _read_index(storage, storage.key(RUNS, INDEX))
    cached = {rid: s for rid, s in index.items() if usable_summary(s)}
    touched = _touched(storage)  # before the runs are read: a later write shows up next time
    folders, flat = _run_folders(storage)
    present = folders | flat
    todo = sorted(rid for rid in present
                  if refresh or rid not in cached or cached[rid].get("touched", "") != touched.get(rid, ""))
    if todo:
        fresh = _read_summaries(storage, todo, touched, workers)
        cached.update(fresh)
        if save:
            try:
                merge_index(storage, fresh)
            except StorageError:
                pass  # a read-only key can still list; the index is only a cache
    rows = [_aged({**s, "run_id": rid}) for rid, s in cached.items() if rid in present]
    return sorted(rows, key=lambda s: s.get("created") or "", reverse=True)


def _aged(summary: dict[str, Any], moment: datetime | None = None) -> dict[str, Any]:
    """A cached ``running`` run that has been quiet since goes ``silent``: silence writes nothing to re-read."""
    seen = parse_time(summary.get("last_seen"))
    if summary.get("state") == "running" and seen is not None:
        if ((moment or now()) - seen).total_seconds() > SILENT_AFTER:
            return {**summary, "state": "silent"}
    return summary


def find_run(storage: Storage, run_id: str) -> RunData:
    """``run_id``, or the newest run for ``latest``; a :class:`StorageError` naming the id otherwise."""
    if run_id == "latest":
        runs = list_runs(storage)
        if not runs:
            raise StorageError(f"No runs in {storage.url(storage.key(RUNS))} yet; `fab deploy-runpod` starts one.")
        run_id = str(runs[0]["run_id"])
    found = read_run(storage, run_id)
    if found is None:
        raise StorageError(f"No run {run_id!r} in {storage.url(storage.key(RUNS))}; `fab runs` lists them.")
    return found


def current_run(storage: Storage, save: bool = True) -> dict[str, Any] | None:
    """The newest run not yet finished (the one a deploy continues), or None."""
    runs = list_runs(storage, save=save)
    return runs[0] if runs and runs[0].get("state") != "finished" else None


RUN_METADATA = "run"
"""Checkpoint object metadata naming the run that uploaded it (the training side sets it from RUN_ID)."""


def run_checkpoints(storage: Storage, run: RunData) -> list[CheckpointInfo]:
    """The checkpoints in ``checkpoints/`` that belong to ``run``, oldest first.

    Those whose ``run`` metadata names it; those without that metadata (older uploads, the old
    scripts' layout) when they were uploaded between the run's creation and its end (or now).
    """
    prefix = storage.key(CHECKPOINTS) + "/"
    listed = [o for o in storage.list(prefix) if o.key.endswith(CHECKPOINT_SUFFIX)]
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(listed) or 1))) as pool:
        objects = [h or o for h, o in zip(pool.map(storage.head, [o.key for o in listed]), listed)]
    end = next((e.at for e in reversed(run.events) if e.kind in ENDING), None)
    mine = []
    for obj in objects:
        owner = {k.lower(): v for k, v in obj.metadata.items()}.get(RUN_METADATA)
        uploaded = obj.last_modified
        if owner:
            if owner == run.run_id:
                mine.append(obj)
        elif uploaded is not None and uploaded >= run.record.created and (end is None or uploaded <= end):
            mine.append(obj)
    return sort_checkpoints(CheckpointInfo.from_object(o) for o in mine)


def parse_created(summary: dict[str, Any]) -> datetime | None:
    return parse_time(summary.get("created"))
