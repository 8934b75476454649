"""One look at a run over real SSH, whatever the runtime: what the watcher and ``fab status`` read.

The host here is this machine through a real sshd: a REMOTE_DIR with a native deploy's supervisor is
native to the probe, one without it is compose (this machine has Docker and Compose), so the same
``run_fact`` looks at either.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from deploy.flow.status import run_status
from deploy.hosts import HostOptions, HostSpec
from deploy.hosts.probe import NATIVE_MARKER
from deploy.runtimes.compose import compose_files, project_for
from deploy.watch.facts import RunFact
from deploy.watch.observe import run_fact
from tests.harness.waiting import wait_until


def _run_dir(tmp_path: Path, step: int) -> Path:
    remote_dir = tmp_path / f"look-{uuid.uuid4().hex[:8]}"
    (remote_dir / "lightning_logs").mkdir(parents=True)
    beat = {"at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "step": step, "epoch": 1}
    (remote_dir / "lightning_logs" / "heartbeat.json").write_text(json.dumps(beat))
    return remote_dir


def _where(ssh_server) -> tuple[HostSpec, HostOptions]:
    return (HostSpec("127.0.0.1", ssh_server.port, ssh_server.user),
            HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(ssh_server.known_hosts)))


def test_the_watcher_looks_at_a_native_run_through_its_supervisor(ssh_server, tmp_path: Path) -> None:
    remote_dir = _run_dir(tmp_path, step=42)
    supervisor = remote_dir / NATIVE_MARKER  # what the probe recognises a native deploy by
    supervisor.parent.mkdir(parents=True, exist_ok=True)
    supervisor.write_text('import json\nprint(json.dumps({"alive": False, "status": "exited", "exit_code": 0}))\n')
    looks: list[RunFact] = []

    def look() -> RunFact | None:  # the watcher looks again after a failed look: so does the test (a loaded host)
        looks.append(run_fact(*_where(ssh_server), str(remote_dir)))
        return looks[-1] if looks[-1].reachable else None

    try:
        fact = wait_until(look, 60, "a look that reaches the host", interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the looks failed with: {sorted({f.why for f in looks})}") from None
    assert (fact.reachable, fact.service, fact.step) == (True, "exited", 42), [f.why for f in looks]


def test_the_watcher_cannot_look_at_a_host_that_refuses_ssh(ssh_server, tmp_path: Path) -> None:
    spec, options = _where(ssh_server)
    closed = HostSpec("127.0.0.1", 9, spec.user)  # discard: nothing listens
    assert run_fact(closed, options, str(tmp_path)) == RunFact(reachable=False)


@pytest.mark.docker
@pytest.mark.parametrize("code, word", [(0, "exited"), (143, "stopped"), (3, "failed")])
def test_the_watcher_and_status_look_at_a_compose_run_through_its_container(
        ssh_server, ssh_connection, docker_client, busybox_image, tmp_path: Path, code: int, word: str) -> None:
    remote_dir = _run_dir(tmp_path, step=77)
    for name, data in compose_files(gpu=False).items():  # `fab status` reads the service's log through Compose
        (remote_dir / name).write_bytes(data)
    (remote_dir / ".env").write_text("")
    project = project_for("docker compose", str(remote_dir), gpu=False)
    container = docker_client.containers.run(
        busybox_image, ["sh", "-c", f"exit {code}"], detach=True,
        labels={"com.docker.compose.project": project.name, "com.docker.compose.service": project.service})
    try:
        container.wait(timeout=60)
        fact = run_fact(*_where(ssh_server), str(remote_dir))
        assert (fact.reachable, fact.service, fact.step) == (True, word, 77)
        status = run_status(ssh_connection, "here", str(remote_dir), storage=None)
        assert status.service.exists and status.service.status == "exited" and not status.service.running
        assert status.service.container == container.id[:12]
        assert status.progress is not None and status.progress.startswith("step 77, epoch 1")
    finally:
        container.remove(force=True)
