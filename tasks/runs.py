"""The run ledger: `fab runs` (every run, its state, hosts and cost) and `fab runs.show RUN`.

What the bucket holds was written by others: the table gets every cell as rich text (never markup) and
every printed line goes through deploy.hosts.text.printable; --json is data (json.dumps escapes controls).
"""

from __future__ import annotations

import json as jsonlib
import os

from invoke import Collection, task

from tasks._boundary import BUCKET_FLAGS, JSON_HELP, RUN_HELP, boundary, settings_from_flags
from tasks._flags import run_arg, whole
from tasks._reach import reach
from tasks._table import make_table, print_table


def _storage(env_file, bucket, prefix):
    """Settings and the bucket, checked to answer as S3 before anything is read."""
    from deploy.storage import Storage

    settings = settings_from_flags(env_file=env_file, S3_BUCKET=bucket, S3_PREFIX=prefix)
    storage = Storage.from_settings(settings, interactive=True)
    reach(settings, storage=storage)
    return settings, storage


@task(name="list", default=True, auto_shortflags=False,
      help={"json": JSON_HELP, "refresh": "Read every run in full instead of trusting the index.",
            "limit": "Show the newest N runs in the table (default 30; 0 shows all). --json lists all.",
            **BUCKET_FLAGS})
@boundary
def list_(c, json=False, refresh=False, limit=None, env_file=None, bucket=None, prefix=None):
    """List the runs in the bucket, newest first: state, hosts, GPUs, restarts, step, hours and cost."""
    from deploy.hosts.text import printable, rich_text
    from deploy.ledger.index import list_runs
    from deploy.ledger.show import TABLE_COLUMNS, table_row

    limit = whole(30 if limit is None else limit, "--limit")  # None default: invoke would cast with a traceback
    _, storage = _storage(env_file, bucket, prefix)
    rows = list_runs(storage, refresh=refresh)
    if json:
        print(jsonlib.dumps(rows, indent=2))
        return
    if not rows:
        print(f"No runs in {storage.url(storage.key('runs'))} yet; `fab deploy-runpod` starts one.")
        return
    shown = rows[:limit] if limit else rows
    table = make_table(TABLE_COLUMNS, right=("hosts", "restarts", "step", "hours"))
    for row in shown:
        table.add_row(*(rich_text(cell) for cell in table_row(row)))
    print_table(table)
    if len(shown) < len(rows):
        print(f"... and {len(rows) - len(shown)} older run(s); --limit=0 shows all, --json lists all.")
    for row in shown:
        if row.get("record_problem"):
            print(printable(f"{row['run_id']}: {row['record_problem']}; `fab runs.show --run {row['run_id']}` shows "
                            "what else can be read."))


@task(auto_shortflags=False,
      help={"run": f"{RUN_HELP} Or 'latest' (the default).", "json": JSON_HELP,
            "plot": "Also draw the loss curves with restart and host-change markers into this PNG "
                    "(needs the plot extra).", **BUCKET_FLAGS})
@boundary
def show(c, run="latest", json=False, plot=None, env_file=None, bucket=None, prefix=None):
    """Show one run: its record, events as a timeline, cost per host, progress and checkpoints."""
    from deploy.ledger.cost import parse_prices
    from deploy.ledger.index import find_run, run_checkpoints
    from deploy.ledger.show import describe_run, run_json

    run = run_arg(run, latest=True)
    settings, storage = _storage(env_file, bucket, prefix)
    data = find_run(storage, run)
    checkpoints = run_checkpoints(storage, data)
    prices = parse_prices(settings.host_price_per_hour or "")
    if json:
        print(jsonlib.dumps(run_json(data, checkpoints, prices=prices), indent=2, default=str))
    else:
        print("\n".join(describe_run(data, checkpoints, prices=prices)))
    if plot:
        print(_plot(storage, data, plot))


def _plot(storage, data, path: str) -> str:
    from deploy.hosts.text import printable
    from deploy.ledger.logs import download_logs, local_log_cache, run_log_versions
    from deploy.ledger.plot import plot_run

    versions = run_log_versions(storage, data)
    folder = local_log_cache(storage) / data.run_id  # the same cache `fab tensorboard` uses
    download_logs(storage, folder, versions)
    out, curves, marks = plot_run(data, [os.path.join(folder, v) for v in versions], path)
    what = f"{curves} loss curve(s)" if curves else "no loss curve yet (no logs in the bucket for this run)"
    return printable(f"plot      {out}: {what}, {marks} restart/host marker(s) from logs {', '.join(versions) or '-'}")


ns = Collection("runs")
ns.add_task(list_, default=True)
ns.add_task(show)
