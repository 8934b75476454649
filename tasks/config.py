"""`fab config`: the effective settings and where each value came from."""

from __future__ import annotations

import json as jsonlib

from invoke import Collection, task

from tasks._boundary import BUCKET_FLAGS, JSON_HELP, boundary, settings_from_flags
from tasks._table import make_table, print_table


@task(auto_shortflags=False, help={"json": JSON_HELP, **BUCKET_FLAGS})
@boundary
def config(c, env_file=None, json=False, bucket=None, prefix=None):
    """Show the effective settings, where each came from, secrets masked (no connection is made)."""
    settings = settings_from_flags(env_file=env_file, S3_BUCKET=bucket, S3_PREFIX=prefix)
    rows = settings.describe()
    if json:
        print(jsonlib.dumps({k: {"value": v, "source": s} for k, v, s in rows}, indent=2))
        return
    state = "read" if settings.env_file_found else "not found"
    print(f".env file: {settings.env_file} ({state})")
    table = make_table(("setting", "value", "source"))
    for key, value, source in rows:
        table.add_row(key, value or "-", source)
    print_table(table)


ns = Collection("config")
ns.add_task(config, default=True)
