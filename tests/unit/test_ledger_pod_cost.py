"""A managed run's pods in the run's cost: by pod id, from the create RunPod accepted to the end it confirmed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from deploy.ledger.cost import run_cost
from deploy.ledger.model import Event, Heartbeat

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=timezone.utc)
HOST = "root@203.0.113.7:40122"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_a_pod_bills_from_its_create_to_its_confirmed_end_even_while_lost() -> None:
    events = [
        Event.make("provisioned", "watch", at=at(0), pod="p1", price_per_hour=0.6),
        Event.make("started", "train-pod", host=HOST, at=at(3)),       # the training's own events ...
        Event.make("deployed", "watch", host=HOST, at=at(4), pod="p1"),  # ... tied to the pod by the watcher's
        Event.make("finished", "train-pod", host=HOST, at=at(20)),
        Event.make("lost", "watch", host=HOST, at=at(30), pod="p1"),     # lost: still billing
        Event.make("terminated", "watch", host=HOST, at=at(60), pod="p1"),
    ]
    beats = [Heartbeat(at=at(10), host=HOST, step=5)]
    cost = run_cost(events, beats)
    (only,) = cost.hosts
    assert only.host == "p1" and only.intervals == 1 and only.hours == pytest.approx(1.0)
    assert cost.dollars == pytest.approx(0.6) and cost.complete


def test_two_pods_of_a_run_are_two_rows_and_a_pod_still_up_counts_until_now() -> None:
    events = [Event.make("provisioned", "watch", at=at(0), pod="p1", price_per_hour=1.0),
              Event.make("terminated", "watch", at=at(30), pod="p1"),
              Event.make("provisioned", "watch", at=at(25), pod="p2", price_per_hour=2.0)]
    cost = run_cost(events, until=at(55))
    assert {h.host: round(h.hours, 3) for h in cost.hosts} == {"p1": 0.5, "p2": 0.5}
    assert cost.dollars == pytest.approx(0.5 + 1.0)
