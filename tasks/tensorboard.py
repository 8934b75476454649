"""`fab tensorboard`: TensorBoard on a run's logs, from the bucket or through an SSH tunnel to the host."""

from __future__ import annotations

import os

from invoke import task

from tasks._boundary import BUCKET_FLAGS, RUN_HELP, boundary, settings_from_flags
from tasks._flags import duration, duration_help, run_arg, whole
from tasks._hosts import HOSTS_HELP, options, targets
from tasks._reach import reach


@task(auto_shortflags=False,
      help={"run": f"{RUN_HELP} Or 'latest' (the default), or 'all' for every version in logs/.",
            "via": "auto (a tunnel to the host while it is up and has TensorBoard, else the bucket), s3 or ssh.",
            "port": "Local port for TensorBoard (default 6006).",
            "refresh": duration_help("How often new log files come down from the bucket", "30s"),
            "hosts": HOSTS_HELP, **BUCKET_FLAGS})
@boundary
def tensorboard(c, run="latest", via="auto", port=None, refresh=None, hosts=None, env_file=None, bucket=None,
                prefix=None):
    """Start TensorBoard on a run's logs: synced incrementally from S3 while it runs, or tunneled from the host."""
    from deploy.errors import DeployError
    from deploy.hosts.ssh import reach_host
    from deploy.ledger.board import check_source, choose_source, port_is_free, tensorboard_command
    from deploy.storage import Storage

    run = run_arg(run, latest=True, also=("all",))
    # None defaults: invoke would cast a bad value with a traceback
    port = whole(6006 if port is None else port, "--port", 1)
    every = duration("30s" if refresh is None else refresh, "--refresh", minimum=1)
    check_source(via)
    settings = settings_from_flags(env_file=env_file, S3_BUCKET=bucket, S3_PREFIX=prefix)
    port_is_free(port)  # a local check, before any connection
    host_known = bool(hosts or settings.runpod_host or hasattr(c, "host"))
    specs = targets(c, settings, hosts) if host_known else []
    opts = options(settings)
    if via == "ssh":
        reach(settings, hosts=specs[:1])

    def host_has_tensorboard() -> bool:
        try:
            reach_host(specs[0], opts, float(settings.connect_timeout_seconds))
        except DeployError:
            return False
        return _host_has_tensorboard(specs[0], settings)

    choice = choose_source(via, host_known, host_has_tensorboard)
    if choice.source == "ssh":
        print(f"source    {choice.source}: {choice.why}")
        _tunnel(specs[0], settings, port)
        return
    tensorboard_command()  # a missing extra says so before anything is downloaded
    storage = Storage.from_settings(settings, interactive=True)
    reach(settings, storage=storage)
    print(f"source    {choice.source}: {choice.why}")
    _serve_from_bucket(storage, run, port, every)


def _host_has_tensorboard(spec, settings) -> bool:
    from deploy.hosts import connect
    from deploy.hosts.remote import run_line
    from deploy.ledger.board import host_probe_command

    with connect(spec, options(settings)) as conn:
        probe = run_line(conn, host_probe_command(spec.workdir(settings.remote_dir)), "Looking for TensorBoard",
                         warn=True, timeout=20)
        return probe.ok and bool(probe.stdout.strip())


def _tunnel(spec, settings, port: int) -> None:
    """The tunnel's ssh is watched: the address is printed once it is up, and its failure is the task's."""
    from deploy.errors import HostError
    from deploy.hosts.session import Session, answers_http
    from deploy.hosts.ssh import ssh_command
    from deploy.ledger.board import tunnel_args

    opts = options(settings)
    with Session(ssh_command(spec, opts), tunnel_args(f"{spec.user}@{spec.host}", spec.workdir(settings.remote_dir),
                                                      port), spec, opts) as session:
        session.start()
        try:  # the address is said once TensorBoard answers through the tunnel, never before
            session.wait_ready(answers_http(port), "TensorBoard", timeout=TENSORBOARD_START)
            print(f"TensorBoard on http://127.0.0.1:{port}/ through {spec} (Ctrl-C stops it)", flush=True)
            code = session.wait()
        except KeyboardInterrupt:
            return  # Ctrl-C is how it ends
        if code != 0:
            raise HostError(f"TensorBoard through the tunnel to {spec} ended with exit {code}; what it said is above.")


TENSORBOARD_START = 120.0
"""Seconds TensorBoard on a host may take to answer (it imports a lot on a cold machine)."""


def _serve_from_bucket(storage, run: str, port: int, every: float) -> None:
    from deploy.ledger.board import serve_local
    from deploy.ledger.index import find_run
    from deploy.ledger.logs import download_logs, local_log_cache, run_log_versions

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
