"""The deploy flow's ``take-lease`` step on the real sshd and the real S3 server: the attempt lands on the host."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Iterator

import pytest

from deploy.flow.group import group_lease
from deploy.flow.rollout import TAKE_LEASE, Rollout, execute, prepare
from deploy.hosts import HostSpec
from deploy.hosts.probe import HostFacts
from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.training.lease import ATTEMPT_FILE, claim, read_lease
from tests.unit.test_flow_lease import PlanningRuntime

RUN = "20261130-0602-lease"


@pytest.fixture
def remote_dirs(ssh_connection) -> Iterator[list[str]]:
    dirs = [f"/tmp/gpu-deploy-lease-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    yield dirs
    ssh_connection.run(f"rm -rf {' '.join(dirs)}", hide=True, warn=True)


def attempt_on_host(conn, remote_dir: str) -> dict:
    with conn.sftp().open(f"{remote_dir}/{ATTEMPT_FILE}") as handle:
        return json.loads(handle.read())


def deploy_once(conn, spec: HostSpec, storage: Storage, remote_dir: str, steps: tuple[str, ...], log: list[str]):
    settings = load_settings()
    rollout = Rollout(image_ref="t:v1", image_id="", image_bytes=0, remote_dir=remote_dir, run_id=RUN)
    deploy = prepare(conn, spec, rollout, settings, PlanningRuntime(steps), HostFacts(), storage=storage)
    return deploy, execute(conn, deploy, storage, wait=5, log=log.append)


def test_each_restarting_deploy_takes_the_next_attempt_and_writes_it_to_the_host(ssh_server, ssh_connection, storage,
                                                                                remote_dirs) -> None:
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    log: list[str] = []
    deploy, result = deploy_once(ssh_connection, spec, storage, remote_dirs[0], ("restart",), log)
    assert result.done == (TAKE_LEASE, "restart")
    assert attempt_on_host(ssh_connection, remote_dirs[0]) == {"run": RUN, "attempt": 1}
    mode = ssh_connection.sftp().stat(f"{remote_dirs[0]}/{ATTEMPT_FILE}").st_mode
    assert stat.S_IMODE(mode) == 0o644
    assert f"127.0.0.1: {TAKE_LEASE}: attempt 1 of run {RUN}; a training of an older attempt stops without " \
           "writing" in log
    claim(storage, RUN, 1, str(spec))  # what the training's entrypoint does when it starts

    _, again = deploy_once(ssh_connection, spec, storage, remote_dirs[0], ("restart",), log)
    assert again.done == (TAKE_LEASE, "restart")
    assert attempt_on_host(ssh_connection, remote_dirs[0]) == {"run": RUN, "attempt": 2}
    lease = read_lease(storage, RUN)
    assert (lease.granted, lease.claimed, lease.granted_to) == (2, 1, str(spec))

    _, nothing = deploy_once(ssh_connection, spec, storage, remote_dirs[0], (), log)
    assert nothing.done == () and read_lease(storage, RUN).granted == 2  # a no-op deploy takes nothing


def test_another_deploy_between_plan_and_execute_is_named_and_the_host_gets_the_newer_attempt(
        ssh_server, ssh_connection, storage, remote_dirs) -> None:
    from deploy.training.lease import grant

    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    settings = load_settings()
    rollout = Rollout(image_ref="t:v1", image_id="", image_bytes=0, remote_dir=remote_dirs[0], run_id=RUN)
    deploy = prepare(ssh_connection, spec, rollout, settings, PlanningRuntime(("start",)), HostFacts(),
                     storage=storage)
    assert deploy.lease is not None and deploy.lease.attempt == 1
    grant(storage, RUN, to="root@203.0.113.9:22")  # another operator's deploy of the same run
    log: list[str] = []
    execute(ssh_connection, deploy, storage, wait=5, log=log.append)
    assert f"{TAKE_LEASE}: attempt 2 of run {RUN} (another deploy took attempt 1 meanwhile)" in log
    assert attempt_on_host(ssh_connection, remote_dirs[0])["attempt"] == 2


def test_a_group_takes_one_attempt_for_every_node(ssh_server, ssh_connection, storage, remote_dirs) -> None:
    specs = [HostSpec("127.0.0.1", ssh_server.port, ssh_server.user, remote_dir=d) for d in remote_dirs]
    settings = load_settings()
    rollout = Rollout(image_ref="t:v1", image_id="", image_bytes=0, remote_dir="/unused", run_id=RUN, num_nodes=2)
    deploys = [prepare(ssh_connection, spec, rollout, settings, PlanningRuntime(("restart",)), HostFacts(), rank=rank,
                       storage=storage) for rank, spec in enumerate(specs)]
    assert [d.run.remote_dir for d in deploys] == remote_dirs
    log: list[str] = []
    done = group_lease([ssh_connection, ssh_connection], deploys, rollout, storage, log.append)
    assert done == (TAKE_LEASE,)
    assert [attempt_on_host(ssh_connection, d)["attempt"] for d in remote_dirs] == [1, 1]
    assert read_lease(storage, RUN).granted == 1 and read_lease(storage, RUN).granted_to == ",".join(map(str, specs))
