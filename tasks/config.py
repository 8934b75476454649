"""`fab config`: the effective settings and where each value came from."""

from __future__ import annotations

import json as jsonlib

from invoke import Collection, task

from tasks._boundary import ENV_FILE_HELP, JSON_HELP, boundary, settings_from_flags


@task(help={"env_file": ENV_FILE_HELP, "json": JSON_HELP})
@boundary
def config(c, env_file=None, json=False):
    """Show the effective settings, where each came from, secrets masked."""
    settings = settings_from_flags(env_file=env_file)
    rows = settings.describe()
    if json:
        print(jsonlib.dumps({k: {"value": v, "source": s} for k, v, s in rows}, indent=2))
        return
    state = "read" if settings.env_file_found else "not found"
    print(f".env file: {settings.env_file} ({state})")
    width = max(len(k) for k, _, _ in rows)
    vwidth = max([len(v) for _, v, _ in rows] + [5])
    for key, value, source in rows:
        print(f"  {key:<{width}}  {value or '-':<{vwidth}}  {source}")


ns = Collection("config")
ns.add_task(config, default=True)
