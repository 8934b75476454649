"""The run ledger against the real S3 server: concurrent writers, old formats, cost over hosts, the plot,
TensorBoard from the bucket, and `fab runs` as an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from deploy.ledger.index import list_runs
from deploy.ledger.store import RunLedger, put_json, read_run
from deploy.storage import Storage
from tests.harness.fab import REPO, run_fab
from tests.harness.servers import free_port
from tests.harness.waiting import wait_until

RUN = "20261130-060000-a1b2"

pytestmark = pytest.mark.usefixtures("own_cache")


WRITER = """
import sys
from deploy.settings import load_settings
from deploy.storage import Storage
role, run_id, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
storage = Storage.from_settings(load_settings())
if role == "deploy":
    from deploy.ledger.store import RunLedger
    ledger = RunLedger(storage, run_id, writer="deploy")
    for i in range(count):
        ledger.event("note", host="gpu-a", n=i, who=role)
else:
    from deploy.training.ledger import TrainingLedger
    ledger = TrainingLedger(storage, run_id, host="gpu-a")
    for i in range(count):
        ledger.event("note", n=i, who=role)
"""


def test_two_concurrent_writers_lose_no_event(storage: Storage, s3_env) -> None:
    """The deploy's writer and the training side's writer, in two processes at once, on one run."""
    env = {**os.environ, **s3_env, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, role, RUN, "40"], env=env, cwd=REPO)
             for role in ("deploy", "train")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    run = read_run(storage, RUN)
    assert run is not None
    seen = sorted((e.data["who"], e.data["n"]) for e in run.events)
    assert seen == sorted((who, n) for who in ("deploy", "train") for n in range(40))
    assert list_runs(storage)[0]["events"] == 80


def test_a_format0_record_still_lists_and_shows(storage: Storage, s3_env) -> None:
    old = {"id": "old-run", "started": "2025-03-01T10:00:00Z", "hosts": ["gpu-old"],
           "events": [{"event": "deployed", "time": "2025-03-01T10:00:00Z", "host": "gpu-old", "price_per_hour": 2.0},
                      {"event": "stopped", "time": "2025-03-01T12:30:00Z", "host": "gpu-old"}]}
    put_json(storage, storage.key("runs", "old-run.json"), old)
    RunLedger(storage, RUN, writer="deploy").event("deployed", host="gpu-a")
    listed = run_fab("runs", "--json", env=s3_env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = {r["run_id"]: r for r in json.loads(listed.stdout)}
    assert rows["old-run"]["format"] == 0 and rows["old-run"]["state"] == "stopped"
    assert rows["old-run"]["cost"] == "$5.00"
    newest = run_fab("runs", "--limit=1", env=s3_env, timeout=120)
    assert RUN in newest.stdout and "old-run" not in newest.stdout
    assert "... and 1 older run(s); --limit=0 shows all, --json lists all." in newest.stdout
    bad = run_fab("runs", "--limit=some", env=s3_env, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip() == "Error: --limit must be a whole number, got 'some'."
    shown = run_fab("runs.show", "--run", "old-run", env=s3_env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "record format 0" in shown.stdout and "deployed" in shown.stdout and "$5.00" in shown.stdout


def test_a_run_on_two_hosts_sums_their_cost(storage: Storage, s3_env) -> None:
    """One host priced by its event (a pod's API price), one by HOST_PRICE_PER_HOUR per host; a restart counts."""
    run = RunLedger(storage, RUN, writer="deploy")
    t0 = time.time()
    for kind, host, at, extra in [("deployed", "root@gpu-a:22", 0, {"price_per_hour": 1.5}),
                                  ("stopped", "root@gpu-a:22", 3600, {}),
                                  ("deployed", "root@gpu-a:22", 5400, {}), ("lost", "root@gpu-a:22", 7200, {}),
                                  ("deployed", "root@gpu-b:22", 7200, {}), ("finished", "root@gpu-b:22", 9000, {})]:
        from deploy.ledger.model import Event, iso
        from datetime import datetime, timezone

        event = Event.make(kind, writer="deploy", host=host, at=datetime.fromtimestamp(t0 + at, timezone.utc), **extra)
        put_json(storage, run.key("events", f"{iso(event.at)}-{kind}-{host}.json".replace(":", "_").replace("@", "_")),
                 event.to_dict())
    from deploy.ledger.store import touch

    touch(storage, RUN)
    shown = run_fab("runs.show", "--run", RUN, "--json", env={**s3_env, "HOST_PRICE_PER_HOUR": "gpu-b=0.80"},
                    timeout=120)
    assert shown.returncode == 0, shown.stderr
    cost = json.loads(shown.stdout)["cost"]
    by_host = {h["host"]: h for h in cost["hosts"]}
    assert by_host["root@gpu-a:22"]["hours"] == pytest.approx(1.5) and by_host["root@gpu-a:22"]["intervals"] == 2
    assert by_host["root@gpu-b:22"]["hours"] == pytest.approx(0.5)
    assert cost["dollars"] == pytest.approx(1.5 * 1.5 + 0.5 * 0.8) and cost["complete"]
    table = run_fab("runs", env=s3_env, timeout=120)
    assert RUN in table.stdout and "finished" in table.stdout


def serves_train_loss(port: int) -> bool:
    """Whether TensorBoard on ``port`` answers and has the run's ``train_loss`` (False: not listening yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=2) as resp:
            return "train_loss" in resp.read().decode()
    except OSError:
        return False


def _write_scalars(folder: Path, steps: range, offset: float) -> None:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step in steps:
        writer.add_scalar("train_loss", 2.0 / (1 + step * 0.1) + offset, step)
        writer.add_scalar("val_loss", 2.2 / (1 + step * 0.1) + offset, step)
    writer.close()


def test_plot_draws_the_loss_with_a_restart_marker(storage: Storage, s3_env, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("tensorboard")
    pytest.importorskip("tensorboardX")
    logs = tmp_path / "lightning_logs"
    _write_scalars(logs / "version_0", range(0, 60), 0.0)
    run = RunLedger(storage, RUN, writer="deploy")
    run.event("deployed", host="root@gpu-a:22")
    run.event("started", host="root@gpu-a:22", log_version="version_0")
    time.sleep(1.1)
    run.event("lost", host="root@gpu-a:22")
    run.event("deployed", host="root@gpu-b:22")
    run.event("started", host="root@gpu-b:22", log_version="version_1")
    _write_scalars(logs / "version_1", range(60, 120), 0.02)
    up = run_fab("s3.upload-logs", "--path", str(logs), env=s3_env, timeout=120)
    assert up.returncode == 0, up.stderr
    png = tmp_path / "run.png"
    shown = run_fab("runs.show", "--run", RUN, "--plot", str(png), env=s3_env, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "2 loss curve(s), 1 restart/host marker(s) from logs version_0, version_1" in shown.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    os.environ.get("KEEP_PLOT") and png.rename(os.environ["KEEP_PLOT"])


def test_tensorboard_serves_the_runs_logs_from_the_bucket(storage: Storage, s3_env, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("tensorboardX")
    _write_scalars(tmp_path / "lightning_logs" / "version_0", range(10), 0.0)
    RunLedger(storage, RUN, writer="deploy").event("started", host="gpu-a", log_version="version_0")
    assert run_fab("s3.upload-logs", "--path", str(tmp_path / "lightning_logs"), env=s3_env).returncode == 0
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "fab"), "--search-root", str(REPO), "tensorboard",
                             "--port", str(port), "--refresh", "2"],
                            env={**os.environ, **s3_env, "GPU_DEPLOY_TENSORBOARD_SECONDS": "60"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        wait_until(lambda: serves_train_loss(port), 90, "TensorBoard serving train_loss")
    finally:
        proc.terminate()  # fab ends its TensorBoard on SIGTERM, as on Ctrl-C
        out = proc.communicate(timeout=30)[0]
    wait_until(lambda: not serves_train_loss(port), 30, "TensorBoard to stop with fab")
    assert "source    s3: no host configured" in out
    assert "logs version_0 ->" in out


def test_missing_tensorboard_is_one_sentence(s3_env, tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "tensorboard.py").write_text("raise ImportError('not installed')\n")
    result = run_fab("tensorboard", env={**s3_env, "PYTHONPATH": str(shim)}, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: TensorBoard is not installed here; install the tensorboard extra: "
                                     "pip install 'gpu-deploy[tensorboard]'.")
    bad = run_fab("tensorboard", "--port=http", env=s3_env, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip() == "Error: --port must be a whole number, got 'http'."


def test_a_stale_heartbeat_on_the_host_reads_as_a_hang(ssh_connection, tmp_path: Path) -> None:
    """The heartbeat's age comes from the host's own clock over real SSH; stale + alive = hang."""
    from datetime import datetime, timedelta, timezone

    from deploy.ledger.live import HANG_AFTER, heartbeat_of, progress_line
    from deploy.runtimes.native.service import NativeService

    remote_dir = tmp_path / "run"
    (remote_dir / "lightning_logs").mkdir(parents=True)
    service = NativeService(str(remote_dir))
    look = service.look(ssh_connection)
    assert heartbeat_of(look.heartbeat, look.clock) == (None, None) and not look.service.exists
    stale = datetime.now(timezone.utc) - timedelta(seconds=HANG_AFTER + 120)
    (remote_dir / "lightning_logs" / "heartbeat.json").write_text(json.dumps(
        {"at": stale.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "step": 4200, "epoch": 7, "metrics": {"loss": 0.25}}))
    look = service.look(ssh_connection)
    assert look.step == 4200 and look.training == "absent"
    beat, age = heartbeat_of(look.heartbeat, look.clock)
    assert beat is not None and beat.step == 4200 and HANG_AFTER + 100 < age < HANG_AFTER + 200
    line, hang = progress_line(beat, age, running=True)
    assert hang and line.startswith("step 4200, epoch 7, loss 0.25 (7 min ago); HANG? no heartbeat for 7 min")


def test_tensorboard_through_an_ssh_tunnel_while_the_host_is_up(ssh_server, s3_env, tmp_path: Path) -> None:
    """auto picks the tunnel when the host has TensorBoard (here the run's virtualenv on the host has it)."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("tensorboardX")
    remote_dir = tmp_path / "run"
    _write_scalars(remote_dir / "lightning_logs" / "version_0", range(10), 0.0)
    (remote_dir / ".venv").symlink_to(Path(sys.executable).parent.parent)
    port = free_port()
    env = {**os.environ, **s3_env, "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(ssh_server.port),
           "RUNPOD_USER": ssh_server.user, "RUNPOD_SSH_KEY": str(ssh_server.client_key),
           "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"), "REMOTE_DIR": str(remote_dir)}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "fab"), "--search-root", str(REPO), "tensorboard",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path, start_new_session=True)
    try:
        wait_until(lambda: serves_train_loss(port), 90, "TensorBoard on the host through the tunnel")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert "source    ssh: the host is up and has TensorBoard" in out
    marker = f"{remote_dir}/.venv/bin/tensorboard"
    wait_until(lambda: not subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout, 30,
               "the host's TensorBoard to end with the tunnel")
