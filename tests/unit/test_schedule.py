"""The test scheduler: with three or more workers the last one runs only the files that wait on clocks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.harness.schedule import CLOCK_BOUND, ClockBoundApart
from tests.harness.fab import REPO

CLOCK = sorted(CLOCK_BOUND)


class Node:
    """What the scheduler sees of a worker: its id, what it was sent, whether it was told to shut down."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.sent: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def scheduled(workers: int, files: list[str]) -> tuple[ClockBoundApart, list[Node], list[str]]:
    values = {"tx": [f"{workers}*popen"]}
    config = SimpleNamespace(option=SimpleNamespace(loadscopereorder=False), getvalue=values.get)
    sched = ClockBoundApart(config)  # how many workers: from the config's --tx, as -n sets it
    collection = [f"{path}::test_{i}" for path in files for i in range(2)]
    nodes = [Node(f"gw{i}") for i in range(workers)]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()
    return sched, nodes, collection


def files_of(node: Node, collection: list[str]) -> set[str]:
    return {collection[i].split("::")[0] for i in node.sent}


def run_all(sched: ClockBoundApart, nodes: list[Node], collection: list[str]) -> None:
    """Complete every test each worker was sent, in turn, as workers report them, until none gets more."""
    done: set[tuple[str, int]] = set()
    progress = True
    while progress:
        progress = False
        for node in nodes:
            for index in list(node.sent):
                if (node.gateway.id, index) not in done:
                    done.add((node.gateway.id, index))
                    sched.mark_test_complete(node, index)
                    progress = True


def test_the_last_of_three_workers_runs_only_clock_bound_files_and_the_others_run_the_rest_first() -> None:
    other = [f"tests/unit/test_{name}.py" for name in "abcdef"]
    sched, nodes, collection = scheduled(3, other[:3] + CLOCK + other[3:])
    run_all(sched, nodes, collection)
    kept = files_of(nodes[2], collection)
    assert kept and kept <= set(CLOCK)  # the kept worker ran clock-bound files only
    assert set(other) <= files_of(nodes[0], collection) | files_of(nodes[1], collection)
    assert sorted(i for node in nodes for i in node.sent) == list(range(len(collection)))  # each test once
    assert all(node.shutting_down for node in nodes)


def test_with_no_clock_bound_file_the_kept_worker_shuts_down_and_the_others_run_everything() -> None:
    other = [f"tests/unit/test_{name}.py" for name in "abcdef"]
    sched, nodes, collection = scheduled(3, other)
    run_all(sched, nodes, collection)
    assert nodes[2].sent == [] and nodes[2].shutting_down
    assert sorted(i for node in nodes for i in node.sent) == list(range(len(collection)))


@pytest.mark.parametrize("workers", [1, 2])
def test_with_fewer_than_three_workers_it_is_plain_loadfile(workers: int) -> None:
    files = ["tests/unit/test_a.py", *CLOCK, "tests/unit/test_b.py"]
    sched, nodes, collection = scheduled(workers, files)
    run_all(sched, nodes, collection)
    assert sorted(i for node in nodes for i in node.sent) == list(range(len(collection)))
    assert set().union(*(files_of(node, collection) for node in nodes)) == set(files)


def test_every_clock_bound_file_exists() -> None:
    assert [path for path in CLOCK if not (REPO / path).is_file()] == []
