"""What the ledger's readers accept from the bucket: the shape checks, index entries, and how an unreadable
record shows (the real S3 server's side: tests/integration/test_ledger_untrusted.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from deploy.ledger.index import summarize, usable_summary
from deploy.ledger.model import Event, Record
from deploy.ledger.show import describe_run, run_json, table_row
from deploy.ledger.store import RunData, Unreadable, check_shape

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("data, what, problem", [
    ([1, 2], "record", "is a JSON list, not a record (a JSON object)"),
    ("text", "event", "is a JSON string, not an event (a JSON object)"),
    (None, "heartbeat", "is null, not a heartbeat (a JSON object)"),
    ({"format": "1"}, "record", 'is not a record: its "format" is a string, not a whole number'),
    ({"format": True}, "record", 'is not a record: its "format" is true/false, not a whole number'),
    ({"command": ["fab"]}, "record", 'is not a record: its "command" is a list, not a string'),
    ({"settings": [1]}, "record", 'is not a record: its "settings" is a list, not an object'),
    ({"kind": "deployed", "at": 5}, "event", 'is not an event: its "at" is a number, not a string'),
    ({"at": "x", "step": "5"}, "heartbeat", 'is not a heartbeat: its "step" is a string, not a number'),
    ({"at": "x", "eta_seconds": 1e300}, "heartbeat", "holds the number 1e+300, beyond what any field can hold"),
    ({"at": "x", "metrics": {"loss": float("nan")}}, "heartbeat", "holds NaN or Infinity, which is not JSON"),
    ({"data": {"a": {"b": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}, "event",
     "nests deeper than 32 levels"),
])
def test_a_malformed_object_is_named_for_what_is_wrong(data, what: str, problem: str) -> None:
    assert check_shape(data, what) == problem


@pytest.mark.parametrize("data, what", [
    ({"format": 1, "run_id": "r", "created": "2026-11-30T06:00:00Z", "dirty": None, "settings": {"A": "1"}}, "record"),
    ({"id": "r", "started": "2025-03-01T10:00:00Z", "hosts": ["gpu-old"], "events": []}, "record"),  # format 0
    ({"event": "deployed", "time": "2025-03-01T10:00:00Z", "price_per_hour": 2.0}, "event"),  # format 0
    ({"at": "2026-11-30T06:00:00Z", "step": 5, "steps_per_second": 4.2, "metrics": {"loss": 0.3}}, "heartbeat"),
])
def test_what_every_writer_writes_fits(data, what: str) -> None:
    assert check_shape(data, what) is None


def test_index_entries_of_another_shape_are_read_again() -> None:
    run = RunData(Record(run_id="r1", created=T0), events=(Event.make("deployed", "w", host="a", at=T0, gpu="L4"),))
    assert usable_summary(summarize(run, T0))
    assert usable_summary({"run_id": "r1", "state": "running"})  # an older entry lacks newer fields
    for bad in ([], "x", {"hosts": "a"}, {"hosts": [1]}, {"events": "3"}, {"hours": float("inf")},
                {"restarts": True}, {"created": 5}):
        assert not usable_summary(bad), bad


def test_an_unreadable_record_is_one_sentence_in_every_view() -> None:
    problem = Unreadable("record", "s3://b/p/runs/r1/record.json", "is not JSON")
    run = RunData(Record(run_id="r1", created=T0, format=-1), unreadable=(problem,),
                  events=(Event.make("deployed", "w", host="a", at=T0),))
    assert str(problem) == "s3://b/p/runs/r1/record.json is not JSON"
    lines = describe_run(run, moment=T0)
    assert lines[0] == "run         r1  (record unreadable: events only)"
    assert lines[1] == ("record      s3://b/p/runs/r1/record.json is not JSON; the rest is read from the run's "
                        "other objects")
    summary = summarize(run, T0)
    assert summary["record_problem"] == str(problem) and summary["unreadable"] == 1
    assert table_row(summary)[2] == "running, record unreadable"
    assert run_json(run)["unreadable"] == [{"what": "record", "url": problem.url, "problem": "is not JSON"}]
