"""How test files are spread over pytest-xdist's workers: one file per worker at a time (``--dist loadfile``), with
the workers beyond one per core kept for the files that mostly wait on a clock.

The managed-run files spend most of their minutes waiting for a deadline, a spend limit or a pod's boot (MAX_HOURS
of 108 s, MAX_SPEND of 91 s), with one lightly loaded pod training. On two cores, two workers that each may draw one
of them waste half the machine meanwhile. So each worker beyond one per core (with three or more workers) is kept
for them: it takes clock-bound files first and the rest only when none is left; the other workers take
everything else first, then clock-bound files if any still wait. Each takes the largest file it may take first. Two kept workers wait on two clocks
at once, where one ran the managed files one after the other for most of the suite's minutes. With fewer than
three workers it is plain ``--dist loadfile``. While the base image is built in the background (a machine that never
built it: ``tests/harness/warmup.py``), the workers that are not kept take the files that need no image first.

``scripts/test`` starts one worker per core plus two.
"""

from __future__ import annotations

import os

from xdist.scheduler import LoadFileScheduling

from tests.harness.warmup import Warmup

CLOCK_BOUND = {
    "tests/e2e/test_managed_faults.py": 415,
    "tests/e2e/test_managed_run.py": 310,
    "tests/e2e/test_managed_zombie.py": 100,
}
"""Test files whose time is mostly waiting on a clock while little else runs (see the module's docstring), with
about how many seconds each takes in the full suite here."""
LONG = {
    "tests/e2e/test_deploy_loop.py": 190, "tests/e2e/test_trainer_project.py": 170,
    "tests/e2e/test_readme_quickstart.py": 130, "tests/e2e/test_demo.py": 85,
    "tests/integration/test_bad_environments.py": 80, "tests/e2e/test_ledger_deploy.py": 70,
    "tests/integration/test_pods.py": 70, "tests/e2e/test_engines.py": 65, "tests/integration/test_s3_tasks.py": 60,
    "tests/integration/test_images.py": 60, "tests/integration/test_native_wheels.py": 50,
    "tests/e2e/test_ledger_compose.py": 50, "tests/e2e/test_native.py": 45,
    "tests/integration/test_training_stop.py": 40,
    "tests/integration/test_training_failures.py": 38, "tests/e2e/test_sync_during_uploads.py": 36,
    "tests/e2e/test_piper_build.py": 35, "tests/unit/test_layout.py": 35, "tests/unit/test_runpod_input.py": 25,
}
"""The other files that take half a minute or more in the full suite here, with about how many seconds: every worker
starts the largest file it may take first, so no long file starts last and holds up the end."""
TIER_SECONDS = {"tests/e2e/": 30, "tests/integration/": 10}
"""What a file not named above is taken to cost, by its tier (a unit file: nothing). Without it a new end-to-end
file with one test would go last: xdist queues files by how many tests they hold, most first."""
SECONDS = {**LONG, **CLOCK_BOUND}


def seconds(scope: str) -> int:
    """About how many seconds the test file ``scope`` takes in the full suite here (:data:`SECONDS`, else its
    tier's)."""
    if scope in SECONDS:
        return SECONDS[scope]
    return next((value for tier, value in TIER_SECONDS.items() if scope.startswith(tier)), 0)


class ClockBoundApart(LoadFileScheduling):
    """``--dist loadfile`` with the workers beyond one per core kept for :data:`CLOCK_BOUND` files."""

    def __init__(self, config, log=None, cores: int | None = None, warmup: Warmup | None = None) -> None:
        super().__init__(config, log)
        self.cores = cores or os.cpu_count() or 1
        self.warmup = warmup

    def schedule(self) -> None:
        if self.collection is None and self.warmup is not None and self.collection_is_completed:
            collected = next(iter(self.registered_collections.values()), [])
            self.warmup.begin({self._split_scope(nodeid) for nodeid in collected})  # before any file is sent
        super().schedule()

    def _kept(self) -> list:
        """The workers kept for clock-bound files: those beyond one per core, when there are three or more."""
        nodes = sorted(self.assigned_work, key=lambda node: node.gateway.id)
        if len(nodes) < 3:
            return []
        kept = min(max(1, len(nodes) - self.cores), len(CLOCK_BOUND), len(nodes) - 1)  # one at least, never all
        return nodes[len(nodes) - kept:]

    def _next_scope(self, node) -> str | None:
        """The file ``node`` should run next, or None when nothing is left."""
        queue = sorted(self.workqueue, key=seconds, reverse=True)  # stable: else by how many tests, most first
        kept = node in self._kept()
        waiting = self.warmup.waiting() if self.warmup is not None else frozenset()
        ready = [scope for scope in queue if scope not in waiting]
        if ready and len(ready) < len(queue) and not kept:  # the base image is being built: what needs none first
            return ready[0]  # (a kept worker waits for it with its clock-bound file: the cores stay busy meanwhile)
        clock = [scope for scope in queue if scope in CLOCK_BOUND]
        other = [scope for scope in queue if scope not in CLOCK_BOUND]
        first, then = (clock, other) if kept else (other, clock)
        return (first or then or [None])[0]

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
