"""`fab runs` and `fab runs.show` over a bucket someone else wrote to, on the real S3 server: malformed objects
are one sentence or left out, never a traceback, and no string from the bucket reaches the terminal raw."""

from __future__ import annotations

import json

import pytest

from deploy.ledger.model import Heartbeat, Record, now
from deploy.ledger.store import RunLedger
from deploy.storage import Storage
from tests.harness.fab import run_fab

HOSTILE = "\x1b[31m\x1b]0;owned\x07\x1b[2J\r\x08\x9b1m\u202e"
GOOD = "20261130-060000-good"
NASTY = "20261130-070000-nasty"

pytestmark = pytest.mark.usefixtures("own_cache")


def put(storage: Storage, body: bytes | str, *parts: str) -> str:
    key = storage.key(*parts)
    storage.client.put_object(Bucket=storage.bucket, Key=key, Body=body.encode() if isinstance(body, str) else body)
    return storage.url(key)


def event(kind: str = "deployed", **fields) -> str:
    return json.dumps({"format": 1, "kind": kind, "at": "2026-11-30T06:00:00.000000Z", "writer": "deploy",
                       "host": "gpu-a", "data": {}, **fields})


def assert_clean(text: str) -> None:
    """Nothing a terminal would act on: no control but newline, no C1, no bidi override."""
    bad = [hex(ord(ch)) for ch in text if (ord(ch) < 32 and ch != "\n") or 0x7f <= ord(ch) <= 0x9f
           or ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"]
    assert bad == [], f"raw characters reached the terminal: {sorted(set(bad))}"


def test_malformed_runs_are_a_sentence_or_left_out_never_a_traceback(storage: Storage, s3_env) -> None:
    ledger = RunLedger(storage, GOOD, writer="deploy")
    ledger.create(Record(run_id=GOOD, created=now(), command="fab deploy-runpod"))
    ledger.event("deployed", host="gpu-a", gpu="NVIDIA L40S", gpus=1)
    urls = {
        "20261130-080000-notjson": put(storage, "{not json", "runs", "20261130-080000-notjson", "record.json"),
        "20261130-080001-list": put(storage, "[1, 2, 3]", "runs", "20261130-080001-list", "record.json"),
        "20261130-080002-deep": put(storage, "[" * 200_000 + "]" * 200_000, "runs", "20261130-080002-deep",
                                    "record.json"),
        "20261130-080003-types": put(storage, json.dumps({"format": "one", "created": "2026-11-30T06:00:00Z"}),
                                     "runs", "20261130-080003-types", "record.json"),
        "20261130-080004-number": put(storage, json.dumps({"format": 1, "command": 5}), "runs",
                                      "20261130-080004-number", "record.json"),
        "20261130-080005-string": put(storage, '"a record"', "runs", "20261130-080005-string", "record.json"),
    }
    for run_id in urls:  # each has one readable event besides its bad record
        put(storage, event(), "runs", run_id, "events", "20261130T060000.000000Z-deploy-1-0.json")
    # Bad events and heartbeats beside a good record: left out and counted.
    put(storage, "nope", "runs", GOOD, "events", "a.json")
    put(storage, event(at=5), "runs", GOOD, "events", "b.json")
    put(storage, event(data={"gpu": "A100", "gpus": "many"}), "runs", GOOD, "events", "c.json")  # readable: gpus ?
    put(storage, '{"kind": "deployed", "at": "2026-11-30T06:00:00Z", "data": {"price_per_hour": NaN}}',
        "runs", GOOD, "events", "d.json")
    put(storage, event(at="0001-01-01T00:00:00+05:00"), "runs", GOOD, "events", "e.json")
    put(storage, json.dumps({"at": "2026-11-30T06:00:00Z", "step": "many"}), "runs", GOOD, "heartbeat", "x.json")
    put(storage, json.dumps({"at": "2026-11-30T06:00:00Z", "metrics": [1]}), "runs", GOOD, "heartbeat", "y.json")
    put(storage, json.dumps({"at": "2026-11-30T06:00:00Z", "eta_seconds": 1e300}), "runs", GOOD, "heartbeat",
        "z.json")
    # Not runs at all, and a broken cache: neither may stop the listing.
    put(storage, "{}", "runs", "not a run id!", "record.json")
    put(storage, "garbage", "runs", "20251231-old-bad.json")
    put(storage, "{broken", "runs", "_index.json")

    table = run_fab("runs", env=s3_env, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "Traceback" not in table.stderr
    for run_id, url in urls.items():
        assert run_id in table.stdout
        assert f"{run_id}: {url} " in table.stdout  # one sentence naming the object ...
    assert f"{urls['20261130-080000-notjson']} is not JSON;" in table.stdout  # ... and what is wrong
    assert f"{urls['20261130-080001-list']} is a JSON list, not a record" in table.stdout
    assert f"{urls['20261130-080002-deep']} nests deeper than" in table.stdout
    assert f'{urls["20261130-080003-types"]} is not a record: its "format" is a string' in table.stdout
    assert f'{urls["20261130-080004-number"]} is not a record: its "command" is a number' in table.stdout
    assert "not a run id" not in table.stdout

    listed = run_fab("runs", "--json", env=s3_env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = {r["run_id"]: r for r in json.loads(listed.stdout)}
    assert rows[GOOD]["unreadable"] == 7 and rows[GOOD]["record_problem"] is None
    assert rows["20261130-080000-notjson"]["record_problem"] == f"{urls['20261130-080000-notjson']} is not JSON"
    assert "20251231-old-bad" in rows  # format 0, unreadable: listed with its sentence
    assert storage.head(storage.key("runs", "_index.json")) is not None
    repaired = json.loads(storage.client.get_object(Bucket=storage.bucket,
                                                    Key=storage.key("runs", "_index.json"))["Body"].read())
    assert GOOD in repaired["runs"]  # the broken cache was replaced by a good one

    for run_id, url in urls.items():
        shown = run_fab("runs.show", "--run", run_id, env=s3_env, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert f"record      {url} " in shown.stdout and "Traceback" not in shown.stderr
        assert "deployed" in shown.stdout  # the readable event is still shown

    good = run_fab("runs.show", "--run", GOOD, env=s3_env, timeout=120)
    assert good.returncode == 0, good.stderr
    assert "unreadable  7 object(s) left out:" in good.stdout
    assert "1x NVIDIA L40S" in good.stdout or "NVIDIA L40S" in good.stdout
    assert f"{storage.url(storage.key('runs', GOOD, 'events', 'a.json'))} is not JSON" in good.stdout
    assert "NaN or Infinity" in good.stdout and "out of range" in good.stdout
    as_json = run_fab("runs.show", "--run", GOOD, "--json", env=s3_env, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    assert len(json.loads(as_json.stdout)["unreadable"]) == 7

    old = run_fab("runs.show", "--run", "20251231-old-bad", env=s3_env, timeout=120)
    assert old.returncode == 0 and "20251231-old-bad.json is not JSON" in old.stdout


def test_strings_from_the_bucket_reach_the_terminal_clean(storage: Storage, s3_env) -> None:
    ledger = RunLedger(storage, NASTY, writer="deploy")
    ledger.create(Record(run_id=NASTY, created=now(), command=f"fab deploy{HOSTILE}\nforged line",
                         image="[bold red]image[/]", settings={"LR": f"0.1{HOSTILE}"}))
    ledger.event("deployed", host=f"gpu{HOSTILE}-a", gpu=f"NVIDIA [red]L40S[/red] :skull:{HOSTILE}", gpus=1,
                 price_per_hour=1.2, note=f"data{HOSTILE}")
    ledger.event("exited", host=f"gpu{HOSTILE}-a", code=f"1{HOSTILE}")
    ledger.heartbeat(Heartbeat(at=now(), host=f"h{HOSTILE}", step=5, metrics={f"loss{HOSTILE}": 0.5}))
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key("checkpoints", "epoch=0-step=5-\u202egnp.ckpt"),
                              Body=b"PK", Metadata={"run": NASTY, "step": "5"})

    table = run_fab("runs", env=s3_env, timeout=120)
    assert table.returncode == 0, table.stderr
    assert_clean(table.stdout)
    assert "NVIDIA [red]L40S[/red] :skull:" in table.stdout  # rich showed the text, not markup or an emoji
    assert "failed (exit 1" in table.stdout

    shown = run_fab("runs.show", "--run", NASTY, env=s3_env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert_clean(shown.stdout)
    command = next(line for line in shown.stdout.splitlines() if line.startswith("command"))
    assert command.startswith("command     fab deploy") and command.endswith(" forged line")  # forges no line
    progress = next(line for line in shown.stdout.splitlines() if line.startswith("progress"))
    assert "step 5" in progress and "loss" in progress and "0.5" in progress
    assert "epoch=0-step=5-gnp.ckpt" in shown.stdout

    as_json = run_fab("runs.show", "--run", NASTY, "--json", env=s3_env, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    assert all(32 <= ord(ch) < 127 or ch == "\n" for ch in as_json.stdout)  # JSON escapes them itself
    assert json.loads(as_json.stdout)["record"]["command"] == f"fab deploy{HOSTILE}\nforged line"  # still data
    listed = run_fab("runs", "--json", env=s3_env, timeout=120)
    assert all(32 <= ord(ch) < 127 or ch == "\n" for ch in listed.stdout)
