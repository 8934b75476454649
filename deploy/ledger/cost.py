"""What a run cost: per host, the hours it worked for the run times its price per hour, summed.

Hours come from the events: a host starts working for the run at an opening event (deployed,
started, provisioned ...) and stops at a closing one (stopped, finished, lost, terminated ...);
while no closing event came, its last sign of life (an event or a heartbeat from that host) ends
the interval. A RunPod pod of a managed run is counted by its id, from the create RunPod accepted
(``provisioned``) to the end RunPod confirmed (``terminated``): a pod bills while it is lost too. Restarts, moves to other hosts and replacements are all counted, each host once per
interval. The price is, newest first: the one an event gave for that host (the pods module passes
the RunPod API's ``costPerHr``; deploy records ``HOST_PRICE_PER_HOUR`` in its event), else unknown.

Pure functions over a list of events: the unit tests check them without a bucket.

Example::

    prices = parse_prices("gpu-a=1.20,gpu-b=0.80")     # or "1.20" for every host
    price_for("root@gpu-a:22", prices)                 # 1.2
    cost = run_cost(events, heartbeats)
    print(cost.describe())                             # "$3.40 (2 hosts, 2.8 h)"
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from deploy.errors import ConfigError
from deploy.ledger.model import CLOSING, OPENING, Event, Heartbeat

ANY_HOST = "*"


def parse_prices(raw: str) -> dict[str, float]:
    """``HOST_PRICE_PER_HOUR``: ``1.20`` (every host) or ``host1=1.20,host2=0.80`` (per host).

    >>> parse_prices("gpu-a=1.2, gpu-b=0.8")
    {'gpu-a': 1.2, 'gpu-b': 0.8}
    >>> parse_prices("0.79")
    {'*': 0.79}
    """
    prices: dict[str, float] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        name, sep, value = part.rpartition("=")
        host = name.strip() if sep else ANY_HOST
        try:
            price = float(value.strip().lstrip("$"))
        except ValueError:
            raise ConfigError(f"HOST_PRICE_PER_HOUR has {part!r}, which is not a price such as 1.20 or "
                              "host1=1.20; write dollars per hour, per host separated by commas.") from None
        if not 0 <= price < 1000 or (sep and not host):
            raise ConfigError(f"HOST_PRICE_PER_HOUR has {part!r}; give dollars per hour from 0 to 1000, "
                              "as 1.20 or host1=1.20.")
        prices[host] = price
    return prices


def _bare(host: str) -> str:
    """``root@10.0.0.5:22/workspace`` -> ``10.0.0.5``: how an operator names a host in a price list."""
    host = host.split("@", 1)[-1].split("/", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def price_for(host: str, prices: Mapping[str, float]) -> float | None:
    """The price of ``host`` from a :func:`parse_prices` mapping: its own, else the default, else None."""
    for name in (host, _bare(host)):
        if name in prices:
            return prices[name]
    return prices.get(ANY_HOST)


@dataclass(frozen=True)
class HostCost:
    """One host's share: the hours it worked for the run, its price, and what that makes."""

    host: str
    hours: float
    intervals: int
    price_per_hour: float | None

    @property
    def dollars(self) -> float | None:
        return None if self.price_per_hour is None else self.hours * self.price_per_hour


@dataclass(frozen=True)
class RunCost:
    hosts: tuple[HostCost, ...]

    @property
    def hours(self) -> float:
        return sum(h.hours for h in self.hosts)

    @property
    def dollars(self) -> float | None:
        """The sum over every host; None when no host has a price."""
        known = [h.dollars for h in self.hosts if h.dollars is not None]
        return sum(known) if known else None

    @property
    def complete(self) -> bool:
        """Every host has a price: the sum is the whole cost, not a lower bound."""
        return all(h.price_per_hour is not None for h in self.hosts)

    def describe(self) -> str:
        """``$3.40``, ``>= $1.20 (no price for gpu-b)``, or ``unknown (no HOST_PRICE_PER_HOUR)``."""
        total = self.dollars
        if total is None:
            return "unknown (no price: set HOST_PRICE_PER_HOUR)" if self.hosts else "$0.00"
        if self.complete:
            return f"${total:.2f}"
        missing = ", ".join(h.host for h in self.hosts if h.price_per_hour is None)
        return f">= ${total:.2f} (no price for {missing})"

    def to_dict(self) -> dict[str, object]:
        return {"dollars": self.dollars, "complete": self.complete, "hours": self.hours,
                "hosts": [{"host": h.host, "hours": h.hours, "intervals": h.intervals,
                           "price_per_hour": h.price_per_hour, "dollars": h.dollars} for h in self.hosts]}


POD_OPENING = frozenset({"provisioned"})
"""A pod bills from the create RunPod accepted (the watcher's ``provisioned``) ..."""
POD_CLOSING = frozenset({"terminated"})
"""... to the end RunPod confirmed: a lost or preempted pod bills until it is terminated."""


def _signs_of_life(events: Iterable[Event], heartbeats: Iterable[Heartbeat]) -> list[tuple[datetime, str, str, bool]]:
    """(time, key, kind, is_pod) of every event and heartbeat that names a host or a pod, in time order.

    The key is the pod's id when the event names one, or when another event tied its host to that pod
    (the watcher's ``deployed`` names both), so a pod's training events never open a second interval."""
    marks: list[tuple[datetime, str, str, str]] = [(e.at, e.host, e.kind, str(e.data.get("pod") or "")) for e in events
                                                   if e.host or e.data.get("pod")]
    marks += [(h.at, h.host, "heartbeat", "") for h in heartbeats if h.host]
    pod_of = {host: pod for _, host, _, pod in sorted(marks, key=lambda m: m[0]) if host and pod}
    keyed = []
    for at, host, kind, pod in sorted(marks, key=lambda m: m[0]):
        pod = pod or pod_of.get(host, "")
        keyed.append((at, pod or host, kind, bool(pod)))
    return keyed


def host_hours(events: Iterable[Event], heartbeats: Iterable[Heartbeat] = (),
               until: datetime | None = None) -> dict[str, tuple[float, int]]:
    """Per host (or pod): (hours worked for the run, number of intervals).

    A host's interval opens at an opening event and closes at the next closing event for that host; a
    pod's opens at its create and closes at its confirmed end. One still open ends at the last sign of
    life, or at ``until`` (``now`` for a live view).
    """
    opened: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    seconds: dict[str, float] = {}
    count: dict[str, int] = {}
    for at, key, kind, is_pod in _signs_of_life(events, heartbeats):
        seconds.setdefault(key, 0.0)
        count.setdefault(key, 0)
        opening, closing = (POD_OPENING, POD_CLOSING) if is_pod else (OPENING, CLOSING)
        if kind in opening and key not in opened:
            opened[key] = at
            count[key] += 1
        elif kind in closing and key in opened:
            seconds[key] += (at - opened.pop(key)).total_seconds()
        if key in opened:
            last[key] = at
    for key, began in opened.items():
        end = max(last.get(key, began), until) if until else last.get(key, began)
        seconds[key] += (end - began).total_seconds()
    return {k: (s / 3600.0, count[k]) for k, s in seconds.items() if count[k]}


def host_prices(events: Iterable[Event]) -> dict[str, float]:
    """The newest price each host (or pod) was given by an event."""
    prices: dict[str, float] = {}
    for event in sorted(events, key=lambda e: e.at):
        key = str(event.data.get("pod") or event.host)
        if key and event.price_per_hour is not None:
            prices[key] = event.price_per_hour
    return prices


def run_cost(events: Iterable[Event], heartbeats: Iterable[Heartbeat] = (), until: datetime | None = None,
             prices: Mapping[str, float] | None = None) -> RunCost:
    """Cost over every host the run used; ``prices`` (HOST_PRICE_PER_HOUR) fill in hosts no event priced."""
    events = list(events)
    recorded = host_prices(events)
    rows = []
    for host, (hours, intervals) in sorted(host_hours(events, heartbeats, until).items()):
        price = recorded.get(host)
        if price is None and prices:
            price = price_for(host, prices)
        rows.append(HostCost(host=host, hours=hours, intervals=intervals, price_per_hour=price))
    return RunCost(hosts=tuple(rows))
