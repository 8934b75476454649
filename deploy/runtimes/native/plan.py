"""The native runtime's desired state, what it gathers from a host, and the pure plan between them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TYPE_CHECKING

from deploy.hosts.envfile import EnvShipment, remote_env_digest
from deploy.hosts.probe import HostFacts
from deploy.hosts.remote import cause, program_source, python_program, run
from deploy.hosts.ssh import HostSpec
from deploy.runtimes.base import RELOAD, CodeSync, Plan, ServiceState, Step
from deploy.runtimes.code.layout import MANIFEST, META, RELEASE
from deploy.runtimes.code.sync import plan_sync
from deploy.runtimes.code.tree import DEPLOY_IGNORE, LocalFile
from deploy.runtimes.native.layout import REQUIREMENTS, SUPERVISOR_FILES, VENV, VENV_MARKER, training_paths
from deploy.runtimes.native.service import STOP_TIMEOUT, NativeService, service_state
from deploy.runtimes.native.venv import BaseInterpreter, requirements_digest, sha256
from deploy.runtimes.native.wheels import StoreLook, package_source, stores_later

if TYPE_CHECKING:
    from fabric import Connection

COMPOSE_FILE = "docker-compose.runpod.yml"  # a compose deploy's service file: its REMOTE_DIR is not ours
MAX_TREE_BYTES = 1 << 30
# What a running training cannot take warm: its settings, interpreter, packages, data link or supervisor change.
COLD_STEPS = ("write-env", "link-data", "create-venv", "install-requirements", "install-supervisor")


@dataclass(frozen=True)
class NativeDesired:
    """What the operator asked for on one host (computed on the laptop)."""

    remote_dir: str
    env: EnvShipment
    python: str
    source: str
    files: Mapping[str, LocalFile]
    train_requirements: tuple[str, ...]
    user_requirements: str | None = None
    requirements_source: str = ""  # requirements.txt or pyproject.toml (deploy.project)
    data_dir: str = ""  # DATA_DIR; elsewhere than REMOTE_DIR/data, data/ links to it (compose mounts it there)
    restart: bool = False
    local_rsync: bool = False
    stop_timeout: int = STOP_TIMEOUT
    max_restarts: int = 5
    package_index: str = ""  # PACKAGE_INDEX: "never" installs only from the bucket's wheel store

    @property
    def venv(self) -> str:
        return f"{self.remote_dir.rstrip('/')}/{VENV}"

    @property
    def data_link(self) -> str | None:
        """The folder ``REMOTE_DIR/data`` must link to, or None when the dataset lands there itself."""
        home = f"{self.remote_dir.rstrip('/')}/data"
        return self.data_dir.rstrip("/") if self.data_dir and self.data_dir.rstrip("/") != home else None

    def run_config(self) -> dict:
        """``run.json``: what the supervisor runs. No secrets: those stay in ``.env``, read on the host."""
        bin_dir = f"{self.venv}/bin"
        return {
            "command": [f"{bin_dir}/python", "-m", "deploy.training.entrypoint"],
            "env": {"ENABLE_S3_SYNC": "1", "CHECKPOINT": "s3", "VIRTUAL_ENV": self.venv, "PYTHONUNBUFFERED": "1"},
            "prepend": training_paths(self.remote_dir),
            "max_restarts": self.max_restarts, "backoff": 1.0, "stop_timeout": float(self.stop_timeout),
        }

    def supervisor_files(self) -> dict[str, bytes]:
        """SUPERVISOR_FILES' contents, in its order (detach.py before supervisor.py, whose start imports it)."""
        run_json = (json.dumps(self.run_config(), indent=2, sort_keys=True) + "\n").encode()
        return {name: run_json if name == "run.json" else program_source(name).encode() for name in SUPERVISOR_FILES}

    def requirements_digest(self, base: BaseInterpreter | None) -> str:
        return requirements_digest(base, self.train_requirements, self.user_requirements)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files.values())


@dataclass(frozen=True)
class NativeState:
    """What the host has now (read-only gathering)."""

    base: BaseInterpreter | None
    base_error: str = ""
    meta_exists: bool = False  # REMOTE_DIR/.gpu-deploy
    files: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # shipped files as they are: size, mtime
    manifest: frozenset[str] = frozenset()
    venv: Mapping[str, str] | None = None  # the virtualenv's marker; None when there is no usable one
    env_digest: str | None = None
    supervisor_digests: Mapping[str, str | None] = field(default_factory=dict)
    release: str | None = None
    compose_deploy: bool = False
    data_link: str | None = None  # where REMOTE_DIR/data links to now (read only when DATA_DIR is elsewhere)
    wheels: StoreLook | None = None  # the bucket's wheel store for these requirements here; None: no bucket
    service: ServiceState = field(default_factory=lambda: ServiceState(exists=False))


def release_digest(desired: NativeDesired, base: BaseInterpreter | None) -> str:
    """What a running process started from: code, settings, packages and supervisor. A change restarts it."""
    files = sorted((rel, f.size, f.mtime) for rel, f in desired.files.items())
    return sha256(json.dumps({"files": files, "env": desired.env.digest,
                              "requirements": desired.requirements_digest(base),
                              "supervisor": {n: sha256(b) for n, b in desired.supervisor_files().items()}},
                             sort_keys=True).encode())


@dataclass(frozen=True, kw_only=True)
class NativePlan(Plan):
    desired: NativeDesired
    state: NativeState
    sync: CodeSync = field(default_factory=CodeSync)
    runtime: ClassVar[str] = "native"
    idle: ClassVar[str] = "training runs this code with these settings"

    def header(self) -> list[str]:
        d, base = self.desired, self.state.base
        python = (f"{d.python} = {base.executable} {base.version}, torch {base.torch or 'not installed'}"
                  if base else f"{d.python} (not found)")
        return [f"python    {python}; virtualenv {d.venv}",
                f"code      {len(d.files)} files, {d.bytes / 1e6:.1f} MB from {d.source} (and gpu-deploy's "
                "training code)",
                f"env keys  {', '.join(d.env.keys)}"]


def _problems(desired: NativeDesired, state: NativeState) -> list[str]:
    problems: list[str] = []
    if state.base is None:
        problems.append(f"NATIVE_PYTHON ({desired.python}) does not run on the host "
                        f"({state.base_error or 'not found'}); "
                        "set NATIVE_PYTHON to the interpreter that has the image's torch (e.g. /usr/bin/python3 "
                        "or /opt/conda/bin/python).")
    if state.compose_deploy:
        problems.append(f"{desired.remote_dir} holds a compose deploy ({COMPOSE_FILE}); deploy there with "
                        "--runtime=compose, or choose another REMOTE_DIR for the native runtime.")
    if desired.bytes > MAX_TREE_BYTES:
        problems.append(f"The working tree {desired.source} is {desired.bytes / 1e9:.1f} GB; list large folders "
                        f"in {DEPLOY_IGNORE} (datasets go through DATASET and the bucket).")
    return problems


def _venv_steps(desired: NativeDesired, state: NativeState, problems: list[str]) -> list[Step]:
    base, steps = state.base, []
    venv_ok = base is not None and state.venv is not None and state.venv.get("base") == base.identity
    if not venv_ok:
        why = "none yet" if state.venv is None else "the interpreter changed"
        steps.append(Step("create-venv", f"{desired.python} -m venv --system-site-packages {desired.venv} ({why})"))
        if base is not None and not base.has_pip and not base.has_venv:
            problems.append(f"{base.executable} has neither pip nor the venv module; install them (Debian/Ubuntu: "
                            f"apt-get install python3-pip python{base.short_version}-venv) or set NATIVE_PYTHON to "
                            "another interpreter.")
    if not venv_ok or (state.venv or {}).get("requirements") != desired.requirements_digest(base):
        lists = "the train extra" + (f" and {desired.requirements_source or REQUIREMENTS}"
                                     if desired.user_requirements is not None else "")
        pin = f", torch pinned to {base.torch}" if base and base.torch else ""
        source = package_source(state.wheels, desired.package_index, problems)
        steps.append(Step("install-requirements",
                          f"pip install {lists} {source} ({'changed' if venv_ok else 'new venv'}{pin})"))
    elif base is not None and stores_later(state.wheels, desired.package_index):
        assert state.wheels is not None
        steps.append(Step("store-wheels", f"the wheels pip installed into {desired.venv}, to {state.wheels.url} "
                                          "for later deploys (the bucket has none for these requirements)"))
    return steps


def plan_native(spec: HostSpec, desired: NativeDesired, state: NativeState, facts: HostFacts) -> NativePlan:
    """Decide the steps from what the host has; pure, so the unit tests check it."""
    problems = _problems(desired, state)
    steps: list[Step] = []
    if not state.meta_exists:
        where = desired.remote_dir if not facts.remote_dir_exists else f"{desired.remote_dir}/{META}"
        steps.append(Step("create-dir", f"create {where}"))
    if state.env_digest != desired.env.digest:
        steps.append(Step("write-env", f".env with {len(desired.env.keys)} keys, mode 0600"))
    sync = plan_sync(desired.files, state.files, state.manifest, desired.local_rsync, facts.tools)
    if not sync.noop:
        steps.append(Step("sync-code", sync.describe()))
    if desired.data_link and state.data_link != desired.data_link:
        steps.append(Step("link-data", f"data -> {desired.data_link} (DATA_DIR, as the compose runtime mounts it)"))
    steps += _venv_steps(desired, state, problems)
    supervisor = {n: sha256(b) for n, b in desired.supervisor_files().items()}
    if any(state.supervisor_digests.get(n) != d for n, d in supervisor.items()):
        steps.append(Step("install-supervisor", ", ".join(f"{META}/{n}" for n in supervisor)))
    current = state.release == release_digest(desired, state.base)
    if desired.restart:
        steps.append(Step("restart", "restart the supervised entrypoint (resumes from the latest checkpoint in S3)"))
    elif state.service.running and not current and not any(s.name in COLD_STEPS for s in steps):
        # Only the project's code changed (the host checks that again): the running entrypoint takes it warm.
        steps.append(Step(RELOAD, "the training takes the new code warm: it stops at a step as `fab stop` does and "
                                  "resumes from it, torch and Lightning imported meanwhile (a restart if it cannot)"))
    elif not state.service.running or not current:
        why = "not running" if not state.service.running else "code, settings or packages changed"
        steps.append(Step("restart" if state.service.running else "start",
                          f"the supervised entrypoint ({why}; resumes from the latest checkpoint in S3)"))
    return NativePlan(spec=spec, desired=desired, state=state, steps=tuple(steps), sync=sync,
                      problems=tuple(problems), facts=facts)


# --------------------------------------------------------------------------- gathering


def parse_gathered(output: str, error: str = "") -> NativeState:
    """deploy/remote/native_facts.py's JSON as a :class:`NativeState`."""
    try:
        data = json.loads(output.strip().splitlines()[-1]) if output.strip() else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return NativeState(base=None, base_error=cause(error, limit=200) or "no output")
    b = data["base"]
    base = BaseInterpreter(executable=b["executable"], version=b["version"], site=tuple(b.get("site") or ()),
                           torch=b.get("torch"), has_venv=bool(b.get("has_venv")), has_pip=bool(b.get("has_pip")),
                           pip=b.get("pip"), platform=str(b.get("platform") or ""), libc=str(b.get("libc") or ""))
    manifest = frozenset(data.get("manifest") or ())
    compose = bool(data.get("compose")) and COMPOSE_FILE not in manifest
    service = data.get("service") or {}
    return NativeState(base=base, meta_exists=bool(data.get("meta", True)),
                       files={k: (int(v[0]), int(v[1])) for k, v in (data.get("files") or {}).items()},
                       manifest=manifest, venv=data.get("venv"), supervisor_digests=data.get("supervisor") or {},
                       release=data.get("release"), compose_deploy=compose, env_digest=data.get("env"),
                       service=service_state(bool(service.get("alive")), service.get("state") or {}))


def gather_native(conn: Connection, desired: NativeDesired) -> NativeState:
    """Read the host in one pass (NATIVE_PYTHON runs deploy/remote/native_facts.py); read-only."""
    args = [desired.remote_dir, MANIFEST, VENV, VENV_MARKER, META, ",".join(SUPERVISOR_FILES), RELEASE, COMPOSE_FILE]
    result = run(conn, python_program(desired.python, "native_facts.py", *args), "Reading the host", warn=True)
    state = parse_gathered(result.stdout if result.ok else "", result.stderr)
    if state.base is None:  # no interpreter ran the program: read what a shell can
        state = NativeState(**{**state.__dict__, "env_digest": remote_env_digest(conn, desired.remote_dir),
                               "service": NativeService(desired.remote_dir).state(conn)})
    if desired.data_link:
        link = run(conn, ["readlink", f"{desired.remote_dir.rstrip('/')}/data"], "Reading the data link", warn=True)
        state = NativeState(**{**state.__dict__, "data_link": link.stdout.strip().rstrip("/") or None})
    return state
