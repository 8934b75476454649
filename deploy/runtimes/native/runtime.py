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

import json
import os
import posixpath
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING

from deploy.hosts.probe import HostFacts
from deploy.hosts.remote import run, write_atomic
from deploy.hosts.ssh import HostOptions, HostSpec
from deploy.project import TrainProject, train_requirements
from deploy.runtimes.base import HostRun, Log, StepHandler, write_env
from deploy.runtimes.code.layout import META, RELEASE
from deploy.runtimes.code.shipped import library_files
from deploy.runtimes.code.sync import send_files
from deploy.runtimes.code.tree import select_files
from deploy.runtimes.native.plan import (NativeDesired, NativePlan, NativeState, gather_native, plan_native,
                                         release_digest)
from deploy.runtimes.native.service import NativeService
from deploy.runtimes.native.venv import create_venv, install_requirements

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
                         local_rsync=bool(shutil.which("rsync") and shutil.which("ssh")))


class NativeRuntime:
    """The native strategy; ``options`` are the SSH settings rsync reuses, ``source`` the training project."""

    name = "native"
    multi_node = False  # a RunPod pod trains one run per host
    needs_image = False  # NATIVE_PYTHON's torch serves; no image moves

    def __init__(self, options: HostOptions | None = None, source: str | os.PathLike[str] = ".") -> None:
        self.options = options or HostOptions()
        self.source = source

    def desire(self, run: HostRun) -> NativeDesired:
        return desired_native(run, self.source)

    def gather(self, conn: Connection, desired: NativeDesired, facts: HostFacts) -> NativeState:
        return gather_native(conn, desired)

    def plan(self, spec: HostSpec, desired: NativeDesired, state: NativeState, facts: HostFacts) -> NativePlan:
        return plan_native(spec, desired, state, facts)

    def service(self, remote_dir: str, facts: HostFacts) -> NativeService:
        return NativeService(remote_dir)

    @property
    def handlers(self) -> Mapping[str, StepHandler]:
        return {"create-dir": create_dir, "write-env": write_env, "sync-code": self.sync_code,
                "link-data": link_data, "create-venv": make_venv, "install-requirements": install,
                "install-supervisor": install_supervisor, "start": start, "restart": start}

    def sync_code(self, conn: Connection, plan: NativePlan, log: Log) -> None:
        send_files(conn, plan, self.options, log)


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


def install(conn: Connection, plan: NativePlan, log: Log) -> None:
    d, base = plan.desired, plan.state.base
    assert base is not None
    install_requirements(conn, d.venv, d.remote_dir, base, d.train_requirements, d.user_requirements,
                         d.requirements_source)


def install_supervisor(conn: Connection, plan: NativePlan, log: Log) -> None:
    for name, data in plan.desired.supervisor_files().items():
        write_atomic(conn, posixpath.join(plan.desired.remote_dir, META, name), data, mode=0o644)


def start(conn: Connection, plan: NativePlan, log: Log) -> int:
    """(Re)start the supervisor, then record what it runs: a later deploy with the same release does nothing."""
    d = plan.desired
    since = NativeService(d.remote_dir).start(conn)
    write_atomic(conn, posixpath.join(d.remote_dir, RELEASE),
                 json.dumps({"release": release_digest(d, plan.state.base)}).encode(), mode=0o644)
    return since
