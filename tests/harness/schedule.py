"""How test files are spread over pytest-xdist's workers: one file per worker at a time (``--dist loadfile``), with
one worker kept for the files that mostly wait on a clock.

The managed-run files spend most of their minutes waiting for a deadline, a spend limit or a pod's boot (MAX_HOURS
of 108 s, MAX_SPEND of 91 s), with one lightly loaded pod training. On two cores, two workers that each may draw one
of them waste half the machine meanwhile; a third worker that draws any file makes three CPU-bound files share two
cores. So with three or more workers the last one takes only the clock-bound files (and shuts down when none is
left), and the others take everything else first, then clock-bound files if any still wait. With fewer workers it
is plain ``--dist loadfile``.

``scripts/test`` starts one worker per core plus that one.
"""

from __future__ import annotations

from xdist.scheduler import LoadFileScheduling

CLOCK_BOUND = frozenset({
    "tests/e2e/test_managed_faults.py",
    "tests/e2e/test_managed_run.py",
    "tests/e2e/test_managed_zombie.py",
})
"""Test files whose time is mostly waiting on a clock while little else runs (see the module's docstring)."""


class ClockBoundApart(LoadFileScheduling):
    """``--dist loadfile`` with the last of three or more workers kept for :data:`CLOCK_BOUND` files."""

    def _waiter(self):
        """The worker kept for clock-bound files: the last one, when there are three or more."""
        nodes = sorted(self.assigned_work, key=lambda node: node.gateway.id)
        return nodes[-1] if len(nodes) >= 3 else None

    def _next_scope(self, node) -> str | None:
        """The file ``node`` should run next, or None when nothing left is for it."""
        clock = [scope for scope in self.workqueue if scope in CLOCK_BOUND]
        other = [scope for scope in self.workqueue if scope not in CLOCK_BOUND]
        if node is self._waiter():
            return clock[0] if clock else None
        return other[0] if other else (clock[0] if clock else None)

    def _assign_work_unit(self, node) -> None:
        scope = self._next_scope(node)
        if scope is None:
            node.shutdown()
            return
        work_unit = self.workqueue.pop(scope)
        self.assigned_work.setdefault(node, {})[scope] = work_unit
        collection = self.registered_collections[node]
        node.send_runtest_some([collection.index(nodeid) for nodeid, done in work_unit.items() if not done])

    def _reschedule(self, node) -> None:
        if node.shutting_down:
            return
        if self._next_scope(node) is None:
            node.shutdown()  # it finishes what it holds, then exits (as loadfile does with an empty queue)
            return
        if self._pending_of(self.assigned_work[node]) > 2:
            return
        self._assign_work_unit(node)
