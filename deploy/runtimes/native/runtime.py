"""The native runtime: training as a supervised process in a virtualenv, for hosts without Docker (RunPod pods).

A RunPod pod is a container already running a PyTorch image; it cannot run Docker. This runtime
brings the same run there, through the same gather -> plan -> execute flow as compose:
``REMOTE_DIR`` mirrors the training project (deploy.project, ``TRAIN_PROJECT``; what travels and how is
deploy.runtimes.code, as for compose) and gets gpu-deploy's training code under ``.gpu-deploy/app``; a virtualenv on the volume sees NATIVE_PYTHON's torch
(:mod:`.venv`); :mod:`deploy.remote.supervisor` runs ``python -m deploy.training.entrypoint``
detached from the SSH session, restarted after a crash, stopped gracefully (:mod:`.service`).
A second deploy with nothing changed plans nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING

from deploy.errors import HostError, StorageError
from deploy.hosts.probe import HostFacts
from deploy.hosts.remote import run, where, write_atomic
from deploy.hosts.ssh import HostOptions, HostSpec
from deploy.project import TrainProject, train_requirements
from deploy.runtimes.base import RELOAD, HostRun, Log, StepHandler, reload_or_restart, write_env
from deploy.runtimes.code.layout import META, RELEASE
from deploy.runtimes.code.shipped import library_files
from deploy.runtimes.code.sync import send_files
from deploy.runtimes.code.tree import select_files
from deploy.runtimes.native.plan import (NativeDesired, NativePlan, NativeState, gather_native, plan_native,
                                         release_digest)
from deploy.runtimes.native.service import NativeService
from deploy.runtimes.native.venv import BaseInterpreter, create_venv, install_requirements, venv_site
from deploy.runtimes.native.wheels import NEVER, StoreLook, host_dir, store_key
from deploy.runtimes.native.wheelstore import BucketWheels, fetch_on_host, store_from_host

if TYPE_CHECKING:
    from fabric import Connection


def desired_native(run: HostRun, source: str | os.PathLike[str] = ".") -> NativeDesired:
    """What one host should get: the run's .env, the project in ``source`` (its code and requirements), the
    training code, NATIVE_PYTHON."""
    project = TrainProject.at(source)
    files = {**select_files(project.root), **library_files()}
    return NativeDesired(remote_dir=run.remote_dir, env=run.env, python=run.native_python, source=project.root,
                         files=files, train_requirements=train_requirements(), user_requirements=project.requirements,
                         requirements_source=project.requirements_source, data_dir=run.data_dir, restart=run.restart,
                         local_rsync=bool(shutil.which("rsync") and shutil.which("ssh")),
                         package_index=run.package_index)


class NativeRuntime:
    """The native strategy; ``options`` are the SSH settings rsync reuses, ``source`` the training project,
    ``wheels`` the bucket's wheel store (None: packages come from the index, nothing is stored)."""

    name = "native"
    multi_node = False  # a RunPod pod trains one run per host
    needs_image = False  # NATIVE_PYTHON's torch serves; no image moves

    def __init__(self, options: HostOptions | None = None, source: str | os.PathLike[str] = ".",
                 wheels: BucketWheels | None = None) -> None:
        self.options = options or HostOptions()
        self.source = source
        self.wheels = wheels

    def desire(self, run: HostRun) -> NativeDesired:
        return desired_native(run, self.source)

    def gather(self, conn: Connection, desired: NativeDesired, facts: HostFacts) -> NativeState:
        state = gather_native(conn, desired)
        store = self.wheels
        if state.base is None or store is None:
            return state
        look = store.look(store_key(desired.requirements_digest(state.base), state.base))
        return dataclasses.replace(state, wheels=look)

    def plan(self, spec: HostSpec, desired: NativeDesired, state: NativeState, facts: HostFacts) -> NativePlan:
        return plan_native(spec, desired, state, facts)

    def service(self, remote_dir: str, facts: HostFacts) -> NativeService:
        return NativeService(remote_dir)

    @property
    def handlers(self) -> Mapping[str, StepHandler]:
        return {"create-dir": create_dir, "write-env": write_env, "sync-code": self.sync_code,
                "link-data": link_data, "create-venv": make_venv, "install-requirements": self.install,
                "store-wheels": self.store_wheels, "install-supervisor": install_supervisor, "start": start,
                "restart": start, RELOAD: reload}

    def sync_code(self, conn: Connection, plan: NativePlan, log: Log) -> None:
        send_files(conn, plan, self.options, log)

    def install(self, conn: Connection, plan: NativePlan, log: Log) -> None:
        """From the bucket's wheel store when it has the set (no package index); else from the index, then the
        wheels of what pip installed go to the store. A store that fails falls back to the index unless pinned."""
        d, base, look = plan.desired, plan.state.base, plan.state.wheels
        assert base is not None
        store = self.wheels
        args = (conn, d.venv, d.remote_dir, base, d.train_requirements, d.user_requirements, d.requirements_source)
        if store is not None and look is not None and look.found is not None:
            folder = host_dir(d.remote_dir, look.key)
            try:
                fetch_on_host(conn, d.python, store, look.found, folder)
                install_requirements(*args, find_links=folder)
                log(f"{where(conn)}: installed from the bucket's wheel store ({look.found.describe()}), "
                    "no package index")
                return
            except (HostError, StorageError) as exc:
                if d.package_index == NEVER:
                    raise HostError(f"PACKAGE_INDEX=never, and the bucket's wheel store {look.url} did not install "
                                    f"on {where(conn)}: {exc}") from exc
                log(f"{where(conn)}: the bucket's wheel store did not install ({exc}); installing from the package "
                    "index instead, and storing the wheels again.")
        install_requirements(*args)
        if store is not None and look is not None:
            try:
                self._store(conn, d, base, store, look, log)
            except (HostError, StorageError) as exc:  # the virtualenv is ready: training need not wait for this
                log(f"{where(conn)}: the wheels were not stored ({exc}); the next deploy plans store-wheels again.")

    def store_wheels(self, conn: Connection, plan: NativePlan, log: Log) -> None:
        """The ``store-wheels`` step: a current virtualenv's wheels, missing from the bucket, go there."""
        store, look, base = self.wheels, plan.state.wheels, plan.state.base
        assert store is not None and look is not None and base is not None
        self._store(conn, plan.desired, base, store, look, log)

    def _store(self, conn: Connection, d: NativeDesired, base: BaseInterpreter, store: BucketWheels,
               look: StoreLook, log: Log) -> None:
        """Build wheels of what pip installed into the virtualenv (its own site-packages) and put them in the bucket."""
        stored, skipped = store_from_host(conn, d.python, posixpath.join(d.venv, "bin", "python"),
                                          venv_site(d.venv, base),
                                          d.remote_dir, store, look.key, host_dir(d.remote_dir, look.key))
        direct = f"; {', '.join(skipped)} came from a URL or path and are not stored" if skipped else ""
        log(f"{where(conn)}: stored {stored.describe()} in {look.url}{direct}")


def create_dir(conn: Connection, plan: NativePlan, log: Log) -> None:
    run(conn, ["mkdir", "-p", posixpath.join(plan.desired.remote_dir, META)], f"Creating {plan.desired.remote_dir}")


def link_data(conn: Connection, plan: NativePlan, log: Log) -> None:
    """``REMOTE_DIR/data`` -> DATA_DIR, so ``data/`` is the dataset here as in the compose runtime.

    ``-T`` refuses to replace a real ``data`` folder (the failure names it) instead of linking inside it.
    """
    d = plan.desired
    run(conn, ["ln", "-sfnT", d.data_link or "", posixpath.join(d.remote_dir, "data")],
        f"Linking {d.remote_dir}/data to DATA_DIR {d.data_link}")


def make_venv(conn: Connection, plan: NativePlan, log: Log) -> None:
    d, base = plan.desired, plan.state.base
    assert base is not None  # a plan without an interpreter has a problem and never runs
    create_venv(conn, d.python, d.venv, d.remote_dir, base)


def install_supervisor(conn: Connection, plan: NativePlan, log: Log) -> None:
    for name, data in plan.desired.supervisor_files().items():
        write_atomic(conn, posixpath.join(plan.desired.remote_dir, META, name), data, mode=0o644)


def start(conn: Connection, plan: NativePlan, log: Log) -> int:
    """(Re)start the supervisor, then record what it runs: a later deploy with the same release does nothing."""
    since = NativeService(plan.desired.remote_dir).start(conn)
    record_release(conn, plan)
    return since


def reload(conn: Connection, plan: NativePlan, log: Log) -> int:
    """The running entrypoint trains the new code warm; the supervisor is restarted when it cannot."""
    return reload_or_restart(conn, NativeService(plan.desired.remote_dir), plan.spec.host, log,
                             lambda: start(conn, plan, log), lambda: record_release(conn, plan))


def record_release(conn: Connection, plan: NativePlan) -> None:
    d = plan.desired
    write_atomic(conn, posixpath.join(d.remote_dir, RELEASE),
                 json.dumps({"release": release_digest(d, plan.state.base)}).encode(), mode=0o644)
