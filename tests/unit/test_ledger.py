"""The run ledger's pure parts: formats, cost, summaries, the index merge (in-process moto for the bucket)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from deploy.errors import ConfigError, StorageError
from deploy.ledger.cost import host_hours, parse_prices, price_for, run_cost
from deploy.ledger.index import list_runs, merge_index, summarize
from deploy.ledger.model import Event, Heartbeat, Record, duration
from deploy.ledger.store import INDEX, RunData, RunLedger, check_run_id, get_json, read_run

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=timezone.utc)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ev(kind: str, minutes: float, host: str = "", **data) -> Event:
    return Event.make(kind, writer="w", host=host, at=at(minutes), **data)


def test_prices_one_for_every_host_or_per_host() -> None:
    assert parse_prices("1.20") == {"*": 1.2}
    prices = parse_prices("gpu-a=1.20, gpu-b=0.80")
    assert price_for("root@gpu-a:22", prices) == 1.2
    assert price_for("gpu-b", prices) == 0.8
    assert price_for("gpu-c", prices) is None
    assert price_for("anything", parse_prices("0.5,gpu-a=2")) == 0.5


@pytest.mark.parametrize("raw", ["cheap", "gpu-a=", "=1.0", "gpu-a=-1"])
def test_bad_prices_name_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match="HOST_PRICE_PER_HOUR"):
        parse_prices(raw)


def test_hours_count_every_interval_and_restart_on_each_host() -> None:
    events = [ev("deployed", 0, "a"), ev("started", 1, "a"), ev("stopped", 60, "a"),
              ev("restarted", 90, "a"), ev("finished", 120, "a"),
              ev("provisioned", 30, "b"), ev("lost", 60, "b")]
    hours = host_hours(events)
    assert hours["a"] == (1.5, 2)
    assert hours["b"] == (0.5, 1)


def test_an_open_interval_ends_at_the_last_heartbeat() -> None:
    events = [ev("deployed", 0, "a")]
    beats = [Heartbeat(at=at(45), host="a", step=10)]
    assert host_hours(events, beats)["a"] == (0.75, 1)
    assert host_hours(events, beats, until=at(60))["a"] == (1.0, 1)


def test_run_cost_sums_hosts_and_prefers_the_price_an_event_gave() -> None:
    events = [ev("deployed", 0, "a", price_per_hour=2.0), ev("stopped", 60, "a"),
              ev("deployed", 0, "b"), ev("stopped", 30, "b")]
    cost = run_cost(events, prices={"*": 1.0, "a": 9.0})
    assert cost.dollars == pytest.approx(2.0 + 0.5)
    assert cost.complete and cost.describe() == "$2.50"


def test_cost_is_unknown_without_a_price_and_a_lower_bound_with_some() -> None:
    events = [ev("deployed", 0, "a"), ev("stopped", 60, "a"), ev("deployed", 0, "b", price_per_hour=1.0),
              ev("stopped", 60, "b")]
    assert run_cost(events[:2]).describe().startswith("unknown")
    assert run_cost(events).describe() == ">= $1.00 (no price for a)"


def test_format0_record_and_events_upgrade() -> None:
    record = Record.from_dict({"id": "old-run", "started": "2025-01-02T03:04:05Z", "hosts": ["gpu-a"]})
    assert record.run_id == "old-run" and record.format == 0 and record.created.year == 2025
    event = Event.from_dict({"event": "deployed", "time": "2025-01-02T03:04:05Z", "host": "gpu-a", "gpu": "A100"})
    assert event is not None and event.kind == "deployed" and event.data == {"gpu": "A100"}
    assert Event.from_dict({"kind": "deployed"}) is None


def test_event_round_trips_and_refuses_unknown_kinds() -> None:
    event = ev("exited", 3, "a", code=1)
    assert Event.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    with pytest.raises(ValueError, match="unknown event kind"):
        Event.make("exploded", writer="w")


def test_summary_states() -> None:
    record = Record(run_id="r", created=T0)
    running = RunData(record, events=(ev("deployed", 0, "a"),), heartbeats=(Heartbeat(at=at(5), host="a", step=7),))
    assert summarize(running, moment=at(6))["state"] == "running"
    assert summarize(running, moment=at(60))["state"] == "silent"
    failed = RunData(record, events=(ev("started", 0, "a"), ev("exited", 1, "a", code=1)))
    assert summarize(failed)["state"] == "failed (exit 1)"
    done = RunData(record, events=(ev("started", 0, "a"), ev("started", 5, "a"), ev("finished", 9, "a", code=0)))
    row = summarize(done)
    assert (row["state"], row["open"], row["restarts"]) == ("finished", False, 1)


def test_durations_for_people() -> None:
    assert [duration(s) for s in (None, 5, 600, 3 * 3600 + 300, 3 * 86400)] == ["?", "5 s", "10 min", "3 h 05 min",
                                                                                 "3 d 0 h"]


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x.json", "-lead"])
def test_run_ids_are_single_safe_segments(bad: str) -> None:
    with pytest.raises(StorageError):
        check_run_id(bad)


def test_writer_events_list_and_the_index_keeps_the_fresher_entry(moto_storage) -> None:


    ledger = RunLedger(moto_storage, "20261130-060000-abcd", writer="deploy")
    assert ledger.create(Record(run_id=ledger.run_id, created=T0, image="img:1"))
    assert not ledger.create(Record(run_id=ledger.run_id, created=at(1), image="other"))
    ledger.event("deployed", host="a", price_per_hour=1.0)
    ledger.event("stopped", host="a")
    run = read_run(moto_storage, ledger.run_id)
    assert run is not None and run.record.image == "img:1" and [e.kind for e in run.events] == ["deployed", "stopped"]
    assert list_runs(moto_storage)[0]["state"] == "stopped"
    index = get_json(moto_storage, moto_storage.key("runs", INDEX))[0]["runs"][ledger.run_id]
    assert index["events"] == 2 and index["state"] == "stopped"
    merge_index(moto_storage, {ledger.run_id: {**index, "events": 1, "state": "stale"}})
    assert list_runs(moto_storage)[0]["state"] == "stopped"
    ledger.event("restarted", host="a")  # a write after the index was made: the next listing sees it
    assert list_runs(moto_storage)[0]["state"] == "running"


def test_bulk_reading_matches_one_by_one(moto_storage) -> None:
    from deploy.ledger.store import read_runs

    for n in range(3):
        ledger = RunLedger(moto_storage, f"run-{n}", writer="deploy")
        ledger.create(Record(run_id=ledger.run_id, created=at(n)))
        for kind in ("deployed", "stopped")[: n + 1]:
            ledger.event(kind, host="a")
    bulk = {r.run_id: r for r in read_runs(moto_storage, ["run-0", "run-1", "run-2", "missing"])}
    assert sorted(bulk) == ["run-0", "run-1", "run-2"]
    for run_id, run in bulk.items():
        single = read_run(moto_storage, run_id)
        assert single is not None and [e.kind for e in single.events] == [e.kind for e in run.events]
        assert single.record == run.record


def test_a_deploy_continues_the_unfinished_run_and_starts_anew_after_a_finish(moto_storage) -> None:
    from deploy.ledger.identity import resolve_run_id
    from deploy.settings import load_settings

    settings = load_settings(environ={})
    first, new = resolve_run_id(moto_storage, settings)
    assert new
    ledger = RunLedger(moto_storage, first, writer="deploy")
    ledger.create(Record(run_id=first, created=T0))
    ledger.event("deployed", host="a")
    ledger.event("stopped", host="a")
    assert resolve_run_id(moto_storage, settings) == (first, False)
    ledger.event("finished", host="a", code=0)
    second, new = resolve_run_id(moto_storage, settings)
    assert new and second != first
    assert resolve_run_id(moto_storage, load_settings(environ={"RUN_ID": first})) == (first, False)


def test_an_unknown_run_is_one_sentence(moto_storage) -> None:
    from deploy.ledger.index import find_run

    with pytest.raises(StorageError, match=r"^No runs in s3://unit-bucket/p/runs yet; `fab deploy-runpod` starts one\.$"):
        find_run(moto_storage, "latest")
    with pytest.raises(StorageError, match=r"^No run 'nope' in s3://unit-bucket/p/runs; `fab runs` lists them\.$"):
        find_run(moto_storage, "nope")


def test_a_cached_running_run_turns_silent_without_any_write() -> None:
    from deploy.ledger.index import _aged

    row = {"state": "running", "last_seen": "2026-11-30T06:00:00.000000Z"}
    assert _aged(row, moment=at(5))["state"] == "running"
    assert _aged(row, moment=at(60))["state"] == "silent"
    assert _aged({**row, "state": "stopped"}, moment=at(60))["state"] == "stopped"


def test_a_dry_run_listing_writes_no_index(moto_storage) -> None:
    from deploy.ledger.identity import resolve_run_id
    from deploy.settings import load_settings

    RunLedger(moto_storage, "r1", writer="deploy").event("deployed", host="a")
    assert resolve_run_id(moto_storage, load_settings(environ={}), save=False) == ("r1", False)
    assert get_json(moto_storage, moto_storage.key("runs", INDEX)) is None
    list_runs(moto_storage)
    assert get_json(moto_storage, moto_storage.key("runs", INDEX)) is not None


def test_a_provider_without_conditional_writes_still_gets_every_event(moto_storage, monkeypatch) -> None:
    from botocore.exceptions import ClientError

    from deploy.training.ledger import TrainingLedger

    real = moto_storage.client.put_object

    def no_conditions(**args):
        if "IfNoneMatch" in args or "IfMatch" in args:
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "no"}}, "PutObject")
        return real(**args)

    monkeypatch.setattr(moto_storage.client, "put_object", no_conditions)
    ledger = RunLedger(moto_storage, "r1", writer="deploy")
    assert ledger.create(Record(run_id="r1", created=T0, image="first"))
    assert not ledger.create(Record(run_id="r1", created=T0, image="second"))  # checked before the write
    ledger.event("deployed", host="a")
    TrainingLedger(moto_storage, "r1", host="a").event("started")
    run = read_run(moto_storage, "r1")
    assert run is not None and run.record.image == "first" and [e.kind for e in run.events] == ["deployed", "started"]
    assert list_runs(moto_storage)[0]["events"] == 2  # the index written without If-Match
