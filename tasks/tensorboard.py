"""`fab tensorboard`: TensorBoard on a run's logs, from the bucket or through an SSH tunnel to the host."""

from __future__ import annotations

import os
import subprocess

from invoke import task

from tasks._boundary import ENV_FILE_HELP, boundary, settings_from_flags
from tasks._flags import number, whole
from tasks._hosts import HOSTS_HELP, options, targets


@task(auto_shortflags=False,
      help={"run": "Run id (`fab runs` lists them), 'latest', or 'all' for every version in logs/.",
            "via": "auto (a tunnel to the host while it is up and has TensorBoard, else the bucket), s3 or ssh.",
            "port": "Local port for TensorBoard (default 6006).",
            "refresh": "Seconds between two downloads of new log files from the bucket (default 30).",
            "hosts": HOSTS_HELP, "env_file": ENV_FILE_HELP})
@boundary
def tensorboard(c, run="latest", via="auto", port=None, refresh=None, hosts=None, env_file=None):
    """Start TensorBoard on a run's logs: synced incrementally from S3 while it runs, or tunneled from the host."""
    from deploy.ledger.board import choose_source, tensorboard_command

    settings = settings_from_flags(env_file=env_file)
    # None defaults: invoke would cast a bad value with a traceback
    port = whole(6006 if port is None else port, "--port", 1)
    every = number(30 if refresh is None else refresh, "--refresh", 1)
    host_known = bool(hosts or settings.runpod_host or hasattr(c, "host"))
    specs = targets(c, settings, hosts) if host_known else []
    choice = choose_source(via, host_known, lambda: _host_has_tensorboard(specs[0], settings))
    print(f"source    {choice.source}: {choice.why}")
    if choice.source == "ssh":
        _tunnel(specs[0], settings, port)
        return
    tensorboard_command()  # a missing extra says so before anything is downloaded
    _serve_from_bucket(settings, run, port, every)


def _host_has_tensorboard(spec, settings) -> bool:
    from deploy.hosts import connect

    from deploy.ledger.board import host_probe_command

    with connect(spec, options(settings)) as conn:
        probe = conn.run(host_probe_command(spec.workdir(settings.remote_dir)), hide=True, warn=True,
                         in_stream=False, timeout=20)
        return probe.ok and bool(probe.stdout.strip())


def _tunnel(spec, settings, port: int) -> None:
    from deploy.hosts.ssh import ssh_command
    from deploy.ledger.board import tunnel_command

    cmd = tunnel_command(ssh_command(spec, options(settings)), f"{spec.user}@{spec.host}",
                         spec.workdir(settings.remote_dir), port)
    print(f"TensorBoard on http://127.0.0.1:{port}/ through {spec} (Ctrl-C stops it)")
    try:
        subprocess.run(cmd, check=False)
    except KeyboardInterrupt:
        pass


def _serve_from_bucket(settings, run: str, port: int, every: float) -> None:
    from deploy.ledger.board import serve_local
    from deploy.ledger.index import find_run
    from deploy.ledger.logs import download_logs, local_log_cache, run_log_versions
    from deploy.storage import Storage

    storage = Storage.from_settings(settings)
    data = None if run == "all" else find_run(storage, run)
    folder = str(local_log_cache(storage) / (data.run_id if data else "all"))
    os.makedirs(folder, exist_ok=True)

    def refresh() -> str:
        return download_logs(storage, folder, run_log_versions(storage, data)).summary()

    print(refresh())
    serve_local(folder, port, refresh, every, stop_after=_stop_after())


def _stop_after() -> float | None:
    """Tests end the server after a while (GPU_DEPLOY_TENSORBOARD_SECONDS); people stop it with Ctrl-C."""
    raw = os.environ.get("GPU_DEPLOY_TENSORBOARD_SECONDS", "")
    return float(raw) if raw else None
