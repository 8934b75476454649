"""The compose runtime: training as a Compose service on a host with Docker, v2 (`docker compose`) or v1.

The image holds the dependencies only; the training project's code reaches REMOTE_DIR by the same
incremental sync the native runtime uses (deploy.runtimes.code), and the service bind-mounts
REMOTE_DIR as its working directory ``/workspace`` (``data/`` and ``lightning_logs/`` below it,
``PYTHONPATH`` = the project, its ``src/`` for a src layout, then gpu-deploy's training code),
exactly as the native runtime runs in REMOTE_DIR: a code-only change moves the changed files and
recreates the container; no image moves.

Its facts are the host's image id, the compose files' digests, the shipped files and the container's
state; its steps create REMOTE_DIR, install small tools, write the .env, sync the code, load the image
from the bucket (through an :class:`ImageSource`), upload the compose files and bring the service up.
Commands are built from lists (deploy.hosts.remote) and nothing secret is ever part of them: the
service reads its settings from ``REMOTE_DIR/.env`` (``env_file``), which Compose also uses for
interpolation.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TYPE_CHECKING

from deploy.errors import HostError
from deploy.hosts.envfile import REMOTE_ENV, EnvShipment, digests_command, read_digests
from deploy.hosts.probe import HostFacts, compose_problems
from deploy.hosts.remote import Part, make_dirs, python_program, run, run_together, write_atomic
from deploy.hosts.ssh import HostOptions, HostSpec
from deploy.project import TrainProject
from deploy.runtimes.base import (RELOAD, CodeSync, HostRun, ImageSource, Log, Plan, ServiceState, Step, StepHandler,
                                  reload_or_restart, write_env)
from deploy.runtimes.code.layout import MANIFEST, META, RELEASE
from deploy.runtimes.code.shipped import library_files
from deploy.runtimes.code.sync import plan_sync, send_files
from deploy.runtimes.code.tree import DEPLOY_IGNORE, LocalFile, select_files

from deploy.runtimes.compose.service import GPU_FILE, SERVICE_FILE, ComposeProject, project_for, read_container

if TYPE_CHECKING:
    from fabric import Connection

REPO_ROOT = Path(__file__).resolve().parents[3]
SMALL_TOOLS = ("zstd", "curl")
MAX_TREE_BYTES = 1 << 30  # code, not data: a larger project almost always ships a dataset by mistake
WORKDIR = "/workspace"  # REMOTE_DIR inside the container
NONE = "-"  # a path native_facts.py reads that a compose host does not have
TRAINING_ENV = {"ENABLE_S3_SYNC": "1", "CHECKPOINT": "s3", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": f"{WORKDIR}:{WORKDIR}/src:{WORKDIR}/{META}/app"}
"""What the service file sets for the entrypoint; the native runtime's run.json sets the same (a test says so)."""


def compose_source(name: str) -> Path:
    """A compose file shipped with the project (beside this package when installed from a clone)."""
    path = REPO_ROOT / name
    if not path.is_file():
        raise HostError(f"The compose file {path} is missing from the project checkout.")
    return path


def compose_files(gpu: bool) -> dict[str, bytes]:
    names = (SERVICE_FILE, GPU_FILE) if gpu else (SERVICE_FILE,)
    return {name: compose_source(name).read_bytes() for name in names}


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- desired, gathered, planned


@dataclass(frozen=True)
class DesiredRun:
    """What the operator asked for on one compose host."""

    image_ref: str
    image_id: str
    remote_dir: str
    env: EnvShipment
    restart: bool = False
    gpu_file: bool | None = None  # None: decided from the probe
    image_bytes: int = 0
    image_problem: str | None = None
    files: Mapping[str, LocalFile] = field(default_factory=dict)  # the project's code and gpu-deploy's training code
    source: str = ""
    local_rsync: bool = False

    def code_digest(self) -> str:
        """What the running container's code is: a change (re)creates it."""
        return code_digest(self.files)


def code_digest(files: Mapping[str, LocalFile]) -> str:
    return file_digest(json.dumps(sorted((rel, f.size, f.mtime) for rel, f in files.items())).encode())


@dataclass(frozen=True)
class HostState:
    """What a compose host has now (read-only gathering)."""

    facts: HostFacts
    host_image_id: str
    env_digest: str | None
    file_digests: dict[str, str]
    service: ServiceState
    code: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # shipped files as they are: size, mtime
    manifest: frozenset[str] = frozenset()
    release: str | None = None  # the code the service was (re)created with


@dataclass(frozen=True, kw_only=True)
class ComposePlan(Plan):
    desired: DesiredRun
    project: ComposeProject
    sync: CodeSync = field(default_factory=CodeSync)
    runtime: ClassVar[str] = "compose"
    idle: ClassVar[str] = "the service runs this image, code and settings"

    def header(self) -> list[str]:
        d, p = self.desired, self.project
        size = sum(f.size for f in d.files.values())
        return [f"image     {d.image_ref} ({d.image_id[:19]})",
                f"code      {len(d.files)} files, {size / 1e6:.1f} MB from {d.source or '.'} (and gpu-deploy's "
                f"training code), mounted at {WORKDIR}",
                f"compose   {p.command} -p {p.name} " + " ".join(f"-f {f}" for f in p.files),
                f"env keys  {', '.join(d.env.keys)}"]


def _wants_gpu(desired: DesiredRun, facts: HostFacts) -> bool:
    return bool(facts.gpus) if desired.gpu_file is None else desired.gpu_file


def gather(conn: Connection, desired: DesiredRun, facts: HostFacts) -> HostState:
    """Read the host in one round trip: its image, the .env and compose files' digests, the service, the shipped
    code (:func:`deploy.hosts.remote.run_together`)."""
    project = project_for(facts.compose_command or "docker compose", desired.remote_dir, _wants_gpu(desired, facts))
    files = (SERVICE_FILE, GPU_FILE, REMOTE_ENV)
    reads: dict[str, Sequence[str] | str] = {"digests": digests_command(desired.remote_dir, files)}
    if facts.docker:
        reads["image"] = ["docker", "image", "inspect", "--format", "{{.Id}}", desired.image_ref]
        reads["service"] = project.state_command()
    if facts.python3 and facts.remote_dir_exists:
        reads["code"] = code_command(desired.remote_dir)
    found = dict(zip(reads, run_together(conn, list(reads.values()), "Reading the host")))
    digests = read_digests(found["digests"].stdout, files)  # a missing file: left out
    env_digest = digests.pop(REMOTE_ENV, None)
    image = found["image"].stdout.strip() if "image" in found and found["image"].ok else ""
    service = read_container(found["service"].stdout)[0] if "service" in found else ServiceState(exists=False)
    code, manifest, release = read_code(found["code"]) if "code" in found else ({}, frozenset(), None)
    return HostState(facts=facts, host_image_id=image, env_digest=env_digest,
                     file_digests=digests, service=service, code=code, manifest=manifest, release=release)


CodeFacts = tuple[dict[str, tuple[int, int]], frozenset[str], "str | None"]  # shipped files, manifest, release


def code_command(remote_dir: str) -> list[str]:
    """The shipped files (size, mtime), the manifest and the code release, read by the host's python3.

    The same read-only program the native runtime runs (deploy/remote/native_facts.py); without a
    python3 on the host nothing is known and every file is sent. A compose host has no virtualenv or
    supervisor of a native deploy, so those arguments name nothing (``-``).
    """
    return python_program("python3", "native_facts.py", remote_dir, MANIFEST, NONE, NONE, META, NONE, RELEASE,
                          SERVICE_FILE)


def read_code(result: Part) -> CodeFacts:
    """:func:`code_command`'s answer: the shipped files, the manifest, the release (nothing known on a failure)."""
    try:
        data = json.loads(result.stdout.strip().splitlines()[-1]) if result.ok else {}
    except (ValueError, IndexError):
        data = {}
    files = {k: (int(v[0]), int(v[1])) for k, v in (data.get("files") or {}).items()}
    return files, frozenset(data.get("manifest") or ()), data.get("release")


def plan_deploy(spec: HostSpec, desired: DesiredRun, state: HostState, facts: HostFacts | None = None) -> ComposePlan:
    """Decide the steps from what the host has; pure, so the unit tests check it."""
    facts = facts or state.facts
    gpu = _wants_gpu(desired, facts)
    project = project_for(facts.compose_command or "docker compose", desired.remote_dir, gpu)
    problems = [desired.image_problem] if desired.image_problem else []
    problems += compose_problems(facts, image_bytes=0 if state.host_image_id else desired.image_bytes, need_gpu=gpu)
    code_bytes = sum(f.size for f in desired.files.values())
    if code_bytes > MAX_TREE_BYTES:
        problems.append(f"The training project {desired.source} is {code_bytes / 1e9:.1f} GB; list large folders in "
                        f"{DEPLOY_IGNORE} (datasets go through DATASET and the bucket).")
    if facts.native:
        problems.append(f"{desired.remote_dir} holds a native deploy (no Docker); deploy there with --runtime=native "
                        "(or auto), or choose another REMOTE_DIR for compose.")
    steps: list[Step] = []
    if not facts.remote_dir_exists:
        steps.append(Step("create-dir", f"create {desired.remote_dir}"))
    missing_tools = [t for t in SMALL_TOOLS if t not in facts.tools]
    if missing_tools and facts.is_root and "apt-get" in facts.tools:
        steps.append(Step("install-tools", f"apt-get install {' '.join(missing_tools)}"))
    env_changed = state.env_digest != desired.env.digest
    if env_changed:
        steps.append(Step("write-env", f".env with {len(desired.env.keys)} keys, mode 0600"))
    sync = plan_sync(desired.files, state.code, state.manifest, desired.local_rsync, facts.tools)
    if not sync.noop:
        steps.append(Step("sync-code", sync.describe()))
    code_changed = bool(desired.files) and state.release != desired.code_digest()
    image_changed = state.host_image_id != desired.image_id
    if image_changed:
        steps.append(Step("load-image", f"load {desired.image_ref} from S3"))
    wanted = {n: file_digest(b) for n, b in compose_files(gpu).items()}
    files_changed = any(state.file_digests.get(n) != d for n, d in wanted.items())
    if files_changed:
        steps.append(Step("upload-compose", ", ".join(wanted)))
    running_current = state.service.running and state.service.image_id == desired.image_id
    if desired.restart:
        steps.append(Step("restart", "recreate the service (resumes from the latest checkpoint in S3)"))
    elif running_current and code_changed and not (env_changed or image_changed or files_changed):
        # Only the project's code changed: the running entrypoint takes it warm (a --force-recreate if it cannot).
        steps.append(Step(RELOAD, "the training takes the new code warm: it stops at a step as `fab stop` does and "
                                  "resumes from it, torch and Lightning imported meanwhile (a recreate if it cannot)"))
    elif env_changed or image_changed or files_changed or code_changed or not running_current:
        why = "not running" if not state.service.running else "image, code or settings changed"
        steps.append(Step("start", f"{project.command} up -d ({why})"))
    return ComposePlan(spec=spec, desired=desired, project=project, steps=tuple(steps), problems=tuple(problems),
                       facts=facts, sync=sync)


# --------------------------------------------------------------------------- the runtime


class ComposeRuntime:
    """The compose strategy; ``images`` loads the image on a host (needed only to execute a plan), ``options``
    are the SSH settings rsync reuses, ``source`` the training project."""

    name = "compose"
    multi_node = True  # host networking: the nodes reach MASTER_ADDR directly
    needs_image = True

    def __init__(self, images: ImageSource | None = None, options: HostOptions | None = None,
                 source: str | os.PathLike[str] = ".") -> None:
        self.images = images
        self.options = options or HostOptions()
        self.source = source

    def desire(self, run: HostRun) -> DesiredRun:
        project = TrainProject.at(self.source)
        return DesiredRun(image_ref=run.image_ref, image_id=run.image_id, remote_dir=run.remote_dir, env=run.env,
                          restart=run.restart, image_bytes=run.image_bytes, image_problem=run.image_problem,
                          files={**select_files(project.root), **library_files()}, source=project.root,
                          local_rsync=bool(shutil.which("rsync") and shutil.which("ssh")))

    def gather(self, conn: Connection, desired: DesiredRun, facts: HostFacts) -> HostState:
        return gather(conn, desired, facts)

    def plan(self, spec: HostSpec, desired: DesiredRun, state: HostState, facts: HostFacts) -> ComposePlan:
        return plan_deploy(spec, desired, state, facts)

    def service(self, remote_dir: str, facts: HostFacts) -> ComposeProject:
        # The GPU file as deploy chose it from the probe: a group's start recreates the service with it.
        return project_for(facts.compose_command or "docker compose", remote_dir, gpu=bool(facts.gpus))

    @property
    def handlers(self) -> Mapping[str, StepHandler]:
        return {"create-dir": create_dir, "install-tools": install_tools, "write-env": write_env,
                "sync-code": self.sync_code, "load-image": self.load_image, "upload-compose": upload_compose,
                "start": start, "restart": start, RELOAD: reload}

    def sync_code(self, conn: Connection, plan: ComposePlan, log: Log) -> None:
        send_files(conn, plan, self.options, log)

    def load_image(self, conn: Connection, plan: ComposePlan, log: Log) -> None:
        if self.images is None:
            raise HostError("The compose runtime was given no image source; deploy through deploy.flow.")
        d = plan.desired
        loaded = self.images.load_on_host(conn, d.image_ref)
        if loaded != d.image_id:
            raise HostError(f"The image loaded on {plan.spec.host} is {loaded[:19]}, not {d.image_id[:19]}.")


def create_dir(conn: Connection, plan: ComposePlan, log: Log) -> None:
    run(conn, ["mkdir", "-p", plan.desired.remote_dir], f"Creating {plan.desired.remote_dir}")


def install_tools(conn: Connection, plan: ComposePlan, log: Log) -> None:
    # Best effort: the tools speed up image loading, the load works without them.
    missing = [t for t in SMALL_TOOLS if t not in plan.facts.tools]
    run(conn, ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", *missing],
        "apt-get install", warn=True)


def upload_compose(conn: Connection, plan: ComposePlan, log: Log) -> None:
    for name, data in compose_files(GPU_FILE in plan.project.files).items():
        write_atomic(conn, posixpath.join(plan.desired.remote_dir, name), data, mode=0o644)


def start(conn: Connection, plan: ComposePlan, log: Log, recreate: bool | None = None) -> int:
    """(Re)create the service, then record the code it runs: a later deploy with the same code does nothing."""
    since = plan.project.start(conn, recreate=plan.needs("restart") if recreate is None else recreate)
    record_release(conn, plan)
    return since


def reload(conn: Connection, plan: ComposePlan, log: Log) -> int:
    """The running entrypoint trains the new code warm; the service is recreated when it cannot."""
    return reload_or_restart(conn, plan.project, plan.spec.host, log, lambda: start(conn, plan, log, recreate=True),
                             lambda: record_release(conn, plan))


def record_release(conn: Connection, plan: ComposePlan) -> None:
    if (d := plan.desired).files:
        make_dirs(conn, posixpath.join(d.remote_dir, META))
        write_atomic(conn, posixpath.join(d.remote_dir, RELEASE), json.dumps({"release": d.code_digest()}).encode(),
                     mode=0o644)
