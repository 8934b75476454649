"""The `fab` entry point: it only composes the task collections from `tasks/`."""

from invoke import Collection

from tasks import config

ns = Collection()
ns.add_task(config.config)
