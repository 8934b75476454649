"""The run ledger: a record per run in the bucket, events from every writer, cost, heartbeats.

- :mod:`deploy.ledger.model`: the record, events, heartbeats and their format versions.
- :mod:`deploy.ledger.store`: the bucket layout, the writer (:class:`RunLedger`), reading a run.
- :mod:`deploy.ledger.index`: summaries and ``runs/_index.json``, so ``fab runs`` stays fast.
- :mod:`deploy.ledger.cost`: hours per host from the events, times its price.
- :mod:`deploy.ledger.identity` and :mod:`deploy.ledger.runs`: which run a deploy belongs to, and
  the deploy's (and ``fab stop``'s) own events.
- :mod:`deploy.ledger.live`: what ``fab status`` adds (run, spend, the host's heartbeat, hangs).
- :mod:`deploy.ledger.show`, :mod:`deploy.ledger.logs`, :mod:`deploy.ledger.plot`,
  :mod:`deploy.ledger.board`: the timeline, a run's logs, the loss plot and TensorBoard for
  ``fab runs.show`` and ``fab tensorboard``.

Nothing here needs torch. The training side writes with the same :class:`RunLedger`
(:mod:`deploy.training.ledger` adds the host's name): ``model`` and ``store`` import only the standard
library, the bucket and the errors, so the image and the native runtime ship exactly those two and this
file; keep this file's imports to them (tests/unit/test_layout.py checks it).
"""

from deploy.ledger.model import FORMAT, Event, Heartbeat, Record
from deploy.ledger.store import RunData, RunLedger, read_run, writer_name

__all__ = ["FORMAT", "Event", "Heartbeat", "Record", "RunData", "RunLedger", "read_run", "writer_name"]
