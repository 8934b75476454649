"""The test scheduler: with three or more workers, those beyond one per core start with the files that wait on clocks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.harness.schedule import CLOCK_BOUND, SECONDS, ClockBoundApart
from tests.harness.fab import REPO

CLOCK = sorted(CLOCK_BOUND)
LARGEST_FIRST = sorted(CLOCK_BOUND, key=CLOCK_BOUND.get, reverse=True)


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


def scheduled(workers: int, files: list[str], warmup=None) -> tuple[ClockBoundApart, list[Node], list[str]]:
    values = {"tx": [f"{workers}*popen"]}
    config = SimpleNamespace(option=SimpleNamespace(loadscopereorder=False), getvalue=values.get)
    sched = ClockBoundApart(config, cores=2, warmup=warmup)  # how many workers: from the config's --tx, as -n sets it
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


def first_file(node: Node, collection: list[str]) -> str:
    return collection[node.sent[0]].split("::")[0]


def test_workers_beyond_one_per_core_start_with_the_clock_bound_files_largest_first() -> None:
    other = [f"tests/unit/test_{name}.py" for name in "abcdef"]
    sched, nodes, collection = scheduled(4, other[:3] + CLOCK + other[3:])  # two cores: two workers kept
    assert [first_file(node, collection) for node in nodes[2:]] == LARGEST_FIRST[:2]
    assert {first_file(node, collection) for node in nodes[:2]} <= set(other)
    run_all(sched, nodes, collection)
    assert set(CLOCK) <= files_of(nodes[2], collection) | files_of(nodes[3], collection)
    assert sorted(i for node in nodes for i in node.sent) == list(range(len(collection)))  # each test once
    assert all(node.shutting_down for node in nodes)


def test_with_three_workers_on_two_cores_the_last_one_is_kept() -> None:
    other = [f"tests/unit/test_{name}.py" for name in "abcdef"]
    sched, nodes, collection = scheduled(3, CLOCK + other)
    assert first_file(nodes[2], collection) == LARGEST_FIRST[0]
    assert {first_file(node, collection) for node in nodes[:2]} <= set(other)
    run_all(sched, nodes, collection)
    assert sorted(i for node in nodes for i in node.sent) == list(range(len(collection)))


def test_with_no_clock_bound_file_every_worker_runs_the_rest() -> None:
    other = [f"tests/unit/test_{name}.py" for name in "abcdefgh"]
    sched, nodes, collection = scheduled(4, other)
    run_all(sched, nodes, collection)
    assert all(node.sent for node in nodes) and all(node.shutting_down for node in nodes)
    assert sorted(i for node in nodes for i in node.sent) == list(range(len(collection)))


@pytest.mark.parametrize("workers", [1, 2])
def test_with_fewer_than_three_workers_it_is_plain_loadfile(workers: int) -> None:
    files = ["tests/unit/test_a.py", *CLOCK, "tests/unit/test_b.py"]
    sched, nodes, collection = scheduled(workers, files)
    run_all(sched, nodes, collection)
    assert sorted(i for node in nodes for i in node.sent) == list(range(len(collection)))
    assert set().union(*(files_of(node, collection) for node in nodes)) == set(files)


def test_every_file_the_scheduler_names_exists() -> None:
    assert [path for path in SECONDS if not (REPO / path).is_file()] == []


def test_each_worker_starts_with_the_largest_file_it_may_take() -> None:
    files = ["tests/unit/test_a.py", "tests/e2e/test_demo.py", *CLOCK, "tests/e2e/test_trainer_project.py"]
    sched, nodes, collection = scheduled(3, files)
    assert [first_file(node, collection) for node in nodes] == [
        "tests/e2e/test_trainer_project.py", "tests/e2e/test_demo.py", LARGEST_FIRST[0]]


def test_a_file_not_named_goes_by_its_tier_before_unit_files_with_more_tests() -> None:
    files = ["tests/unit/test_many.py", "tests/integration/test_new.py", "tests/e2e/test_new.py"]
    config = SimpleNamespace(option=SimpleNamespace(loadscopereorder=True), getvalue={"tx": ["1*popen"]}.get)
    sched = ClockBoundApart(config, cores=2)
    collection = [f"{files[0]}::test_{i}" for i in range(9)] + [f"{files[1]}::test_{i}" for i in range(3)] + [
        f"{files[2]}::test_0"]  # xdist queues files by how many tests they hold: unit, integration, e2e
    node = Node("gw0")
    sched.add_node(node)
    sched.add_node_collection(node, collection)
    sched.schedule()
    run_all(sched, [node], collection)
    order = list(dict.fromkeys(collection[i].split("::")[0] for i in node.sent))
    assert order == [files[2], files[1], files[0]]


class FakeWarmup:
    """The base image's build, as the scheduler sees it: told what was collected, then busy until ``done``."""

    def __init__(self, needs: set[str]) -> None:
        self.needs, self.collected, self.building = needs, None, True

    def begin(self, collected: set[str]) -> None:
        assert self.collected is None, "begun once"
        self.collected = collected

    def waiting(self) -> frozenset[str]:
        return frozenset(self.needs) if self.building else frozenset()


def test_while_the_base_image_is_built_the_workers_not_kept_take_files_that_need_none() -> None:
    unit = [f"tests/unit/test_{name}.py" for name in "abcdefghijkl"]
    needs = {*CLOCK, "tests/e2e/test_trainer_project.py", "tests/integration/test_pods.py"}
    files = [*unit, "tests/integration/test_s3_tasks.py", *sorted(needs)]
    warmup = FakeWarmup(needs)
    sched, nodes, collection = scheduled(4, files, warmup)
    assert warmup.collected == set(files)
    first = [first_file(node, collection) for node in nodes]
    assert first[0] == "tests/integration/test_s3_tasks.py" and not set(first[:2]) & needs  # the largest ready
    assert first[2:] == LARGEST_FIRST[:2]  # the kept workers wait for the image with their clock-bound files
    assert all(files_of(node, collection).isdisjoint(needs) for node in nodes[:2])
    warmup.building = False
    run_all(sched, nodes, collection)
    assert sorted(i for node in nodes for i in node.sent) == list(range(len(collection)))
