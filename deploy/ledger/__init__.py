"""The run ledger: a record per run in the bucket, events from every writer, cost, heartbeats.

- :mod:`deploy.ledger.model`: the record, events, heartbeats and their format versions.
- :mod:`deploy.ledger.store`: the bucket layout, the writer (:class:`RunLedger`), reading a run.
- :mod:`deploy.ledger.index`: summaries and ``runs/_index.json``, so ``fab runs`` stays fast.
- :mod:`deploy.ledger.cost`: hours per host from the events, times its price.
- :mod:`deploy.ledger.identity` and :mod:`deploy.ledger.runs`: which run a deploy belongs to, and
  the deploy's own events.
- :mod:`deploy.ledger.show`, :mod:`deploy.ledger.plot`, :mod:`deploy.ledger.board`: the timeline, the
  loss plot and TensorBoard for ``fab runs.show`` and ``fab tensorboard``.

Nothing here needs torch; the training side's writer is :mod:`deploy.training.heartbeat`.
"""

from deploy.ledger.model import FORMAT, Event, Heartbeat, Record
from deploy.ledger.store import RunData, RunLedger, read_run, writer_name

__all__ = ["FORMAT", "Event", "Heartbeat", "Record", "RunData", "RunLedger", "read_run", "writer_name"]
