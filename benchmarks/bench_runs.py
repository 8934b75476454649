"""`fab runs` over a bucket of many run records (issue 15): the index against reading every run.

Starts its own moto S3 server on loopback, writes ``--runs`` records (default 1,000) the way the
ledger does (record.json, ``--events`` event objects, a heartbeat and the touch object per run;
most finished, a few still running), then times, best of ``--repeat``:

1. cold:   ``list_runs`` with no index (every run read: one LIST and a few GETs each, in parallel);
2. warm:   ``list_runs`` with the index current (one GET, two LISTs);
3. churn:  ``list_runs`` after ``--changed`` runs got a new event (those re-read);
4. fab:    ``fab runs --json`` as an operator runs it (a fresh process: Python, invoke, boto3 start-up),
           and ``fab runs`` (the table) both with the index current.

Usage::

    .venv/bin/python -m benchmarks.bench_runs [--runs 1000] [--events 6] [--changed 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deploy.ledger.index import list_runs  # noqa: E402
from deploy.ledger.model import Event, Heartbeat, Record  # noqa: E402
from deploy.ledger.store import RUNS, RunLedger, put_json, touch  # noqa: E402
from deploy.storage import Storage  # noqa: E402
from tests.harness.servers import S3Server  # noqa: E402

BUCKET = "bench-runs"
PREFIX = "bench"
KINDS = ("deployed", "started", "note", "exited", "started", "stopped", "restarted", "started")


def write_run(storage: Storage, index: int, events: int, running: bool) -> None:
    """One run as the writers leave it: a record, ``events`` events, a heartbeat, its touch."""
    run_id = f"20261101-{index:06d}-b{index % 4096:03x}"
    began = datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(minutes=index)
    host = f"root@gpu-{index % 7}:22"
    put_json(storage, storage.key(RUNS, run_id, "record.json"),
             Record(run_id=run_id, created=began, command="fab deploy-runpod", image="piper-train:latest",
                    settings_digest="sha256:" + "0" * 64, settings={"MAX_EPOCHS": "100"}).to_dict())
    for n in range(events):
        kind = KINDS[n % len(KINDS)] if (running or n < events - 1) else "finished"
        event = Event.make(kind, writer="bench", host=host, at=began + timedelta(minutes=n * 10),
                           gpu="NVIDIA L40S", gpus=1, price_per_hour=0.79, code=0 if kind == "finished" else None)
        put_json(storage, storage.key(RUNS, run_id, "events", f"{n:04d}-bench.json"), event.to_dict())
    beat = Heartbeat(at=began + timedelta(minutes=events * 10), host=host, step=1000 * events, epoch=events)
    put_json(storage, storage.key(RUNS, run_id, "heartbeat", "bench.json"), beat.to_dict())
    touch(storage, run_id)


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--events", type=int, default=6)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(Path(tmp) / "moto").start()
        try:
            client = server.client()
            client.create_bucket(Bucket=BUCKET)
            storage = Storage(client, BUCKET, PREFIX, endpoint=server.endpoint_url)
            began = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: write_run(storage, i, args.events, running=i % 100 == 0), range(args.runs)))
            objects = args.runs * (args.events + 3)
            print(f"wrote {args.runs} runs ({objects} objects) in {time.perf_counter() - began:.1f} s")

            index_key = storage.key(RUNS, "_index.json")

            def cold() -> list:
                client.delete_object(Bucket=BUCKET, Key=index_key)
                return list_runs(storage)

            cold_s, rows = best(cold, 1)
            print(f"cold  (no index, every run read):    {cold_s:6.2f} s for {len(rows)} runs")
            warm_s, rows = best(lambda: list_runs(storage), args.repeat)
            print(f"warm  (index current):               {warm_s:6.2f} s for {len(rows)} runs")
            for i in range(args.changed):
                RunLedger(storage, str(rows[i]["run_id"]), writer="bench").event("note", host="", n=i)
            churn_s, _ = best(lambda: list_runs(storage), 1)
            print(f"churn ({args.changed} runs changed since the index): {churn_s:6.2f} s")
            env = {**os.environ, **server.environ(BUCKET, PREFIX)}
            fab = [str(Path(sys.executable).parent / "fab"), "--search-root", str(REPO)]
            for label, extra in (("fab runs --json", ["runs", "--json"]), ("fab runs", ["runs"])):
                def cli(extra=extra) -> int:
                    done = subprocess.run(fab + extra, env=env, capture_output=True, text=True, timeout=300)
                    assert done.returncode == 0, done.stderr
                    return len(done.stdout)
                cli_s, _ = best(cli, args.repeat)
                print(f"{label:<16} (fresh process):     {cli_s:6.2f} s")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
