"""The run on the GPU host: deploy it, watch it, stop it, bring its results back."""

from __future__ import annotations

import os
import shlex

from invoke import Collection, task

from deploy.hosts import connect, require_sftp
from deploy.hostsync import pull, ssh_command
from tasks._boundary import ENV_FILE_HELP, boundary, settings_from_flags
from tasks._hosts import HOSTS_HELP, for_each_host, options, raise_if_failed, targets


@task(
    iterable=["exclude"],
    help={
        "path": "Path under REMOTE_DIR to bring back (default: lightning_logs).",
        "dest": "Local folder to put it in (default: the current folder).",
        "exclude": "Glob of files to leave on the host; repeat for more (e.g. --exclude='*.ckpt').",
        "method": "auto (rsync when both ends have it, else SFTP), rsync or sftp.",
        "hosts": HOSTS_HELP,
        "env_file": ENV_FILE_HELP,
    },
)
@boundary
def sync_from_runpod(c, path="lightning_logs", dest=".", exclude=None, method="auto", hosts=None, env_file=None):
    """Bring a path under REMOTE_DIR back from the host, incrementally."""
    settings = settings_from_flags(env_file=env_file)
    specs = targets(c, settings, hosts)[:1]  # results come from the first host (rank 0)
    opts = options(settings)

    def work(spec):
        require_sftp(spec)
        with connect(spec, opts) as conn:
            return pull(conn, spec, opts, settings.remote_dir, path, dest, exclude or (), method=method)

    outcomes = for_each_host(specs, work)
    for outcome in outcomes:
        if outcome.result is not None:
            print(outcome.result.summary())
    raise_if_failed(outcomes)


@task(help={"hosts": HOSTS_HELP, "env_file": ENV_FILE_HELP})
@boundary
def ssh(c, hosts=None, env_file=None):
    """Open an interactive shell on the host, in REMOTE_DIR."""
    settings = settings_from_flags(env_file=env_file)
    spec = targets(c, settings, hosts)[0]
    cmd = ssh_command(spec, options(settings)) + ["-t", f"{spec.user}@{spec.host}",
                                                  f"cd {shlex.quote(settings.remote_dir)} 2>/dev/null; exec $SHELL -l"]
    os.execvp(cmd[0], cmd)


ns = Collection("runpod")
ns.add_task(sync_from_runpod)
ns.add_task(ssh)
