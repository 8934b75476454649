"""Hosts connected and probed in the background while the deploy reads the bucket.

A deploy's first work is the bucket's (the run, the dataset, the ledger), a few hundred milliseconds of
requests; the host's first work is the SSH handshake and the probe, as long again, and neither needs the
other. :class:`Ahead` starts the second beside the first, and :func:`deploy.flow.rollout.deploy_hosts`
takes each host's open connection and facts from it instead of connecting and probing then::

    ahead = Ahead.start(specs, options, settings.runtime, settings.remote_dir)
    try:
        ...                                    # the bucket's work
        deploy_hosts(specs, rollout, ..., ahead=ahead)
    finally:
        ahead.close()                          # what was not taken is closed

The probe is the same one, with the same warm-ahead line (:func:`deploy.runtimes.base.warm_ahead`), and it is
read-only but for that line. A host that cannot be reached or probed raises its error when its work takes it,
as connecting there would have.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploy.flow.choose import runtimes
from deploy.hosts.probe import HostFacts, probe
from deploy.hosts.ssh import HostOptions, HostSpec, connect
from deploy.runtimes.base import warm_ahead

if TYPE_CHECKING:
    from fabric import Connection


@dataclass(frozen=True)
class Opened:
    """A host's open connection and what its probe found."""

    conn: Connection
    facts: HostFacts


def _in_background(work: Callable[[], Opened]) -> Future[Opened]:
    """``work()`` in a daemon thread (a deploy that fails first exits without waiting for a host's timeout)."""
    future: Future[Opened] = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - raised again where the host's work takes it
            future.set_exception(exc)

    threading.Thread(target=run, name="ahead", daemon=True).start()
    return future


def _close_opened(future: Future[Opened]) -> None:
    if future.exception() is None:
        future.result().conn.close()


class Ahead:
    """Each host's connection and probe, started at once in background threads."""

    def __init__(self, pending: dict[HostSpec, Future[Opened]]) -> None:
        self._pending = pending

    @classmethod
    def start(cls, specs: Sequence[HostSpec], options: HostOptions, runtime: str, remote_dir: str) -> Ahead:
        lines = runtimes(options=options) if specs else {}  # a service's reload line needs no collaborator

        def open_one(spec: HostSpec) -> Opened:
            workdir = spec.workdir(remote_dir)
            warm = warm_ahead(lines, runtime, workdir)
            conn = connect(spec, options)
            try:
                return Opened(conn, probe(conn, workdir, warm.get("native", ""), warm.get("compose", "")))
            except BaseException:
                conn.close()
                raise

        return cls({spec: _in_background(lambda spec=spec: open_one(spec)) for spec in specs})

    def take(self, spec: HostSpec) -> Opened | None:
        """``spec``'s connection and facts (waiting for them); its error when it failed; None when not started."""
        pending = self._pending.pop(spec, None)
        return None if pending is None else pending.result()

    def close(self) -> None:
        """Close what was opened and not taken (once it is opened, for a connection still on its way)."""
        for pending in self._pending.values():
            pending.add_done_callback(_close_opened)  # at once when it is done, else when it is
        self._pending.clear()
