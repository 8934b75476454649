"""`deploy-runpod` without Docker: the run as a supervised process in a virtualenv (RunPod pods).

A RunPod pod is a container already running a PyTorch image; it cannot run Docker. The native
runtime brings the same run there, in the same gather -> plan -> execute shape as the compose one:

- ``REMOTE_DIR`` mirrors the working tree (the folder ``fab`` runs in, honouring ``.gitignore`` files
  and a ``.deployignore``; ``.env``, ``.git`` and virtualenvs never go), and gpu-deploy's own
  ``deploy`` package goes to ``REMOTE_DIR/.gpu-deploy/app``. Only files whose size or mtime differ
  move (rsync when both ends have it, else SFTP); files a previous deploy shipped and the tree no
  longer has are removed (a manifest remembers what was shipped, so outputs are never touched).
- ``REMOTE_DIR/.venv`` is made with ``NATIVE_PYTHON -m venv --system-site-packages`` and sees every
  package that interpreter sees (the image's torch), even when that interpreter is itself a
  virtualenv. pip installs the ``train`` extra and the tree's ``requirements.txt`` there, only when
  they (or the interpreter) changed, with torch pinned to the interpreter's own build, so a
  requirement never swaps the image's CUDA torch for a download of several GB.
- :mod:`deploy.remote.supervisor` runs ``python -m deploy.training.entrypoint`` in ``REMOTE_DIR`` (resume
  from S3, S3 sync on, settings from ``REMOTE_DIR/.env`` read on the host), detached from the SSH
  session, restarted after a crash, stopped gracefully.

A second deploy with nothing changed plans nothing. Example::

    state = gather_native(conn, desired)
    plan = plan_native(spec, desired, state, facts)
    print("\\n".join(plan.describe()))
    execute_native(conn, plan, options)
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy.runtimes.compose import REPO_ROOT, SERVICE_FILE, STOP_TIMEOUT, ServiceState
from deploy.hosts.envfile import EnvShipment, remote_env_digest, ship_env
from deploy.errors import ConfigError, HostError
from deploy.hosts import HostOptions, HostSpec
from deploy.hosts.probe import NATIVE_MARKER, HostFacts

META = ".gpu-deploy"
APP = f"{META}/app"
VENV = ".venv"
LOG = "train.log"
MANIFEST = f"{META}/manifest.json"
RELEASE = f"{META}/release.json"
VENV_MARKER = f"{VENV}/gpu-deploy.json"
REQUIREMENTS = "requirements.txt"
SUPERVISOR_FILES = ("supervisor.py", "run.json")
STARTED_MARKER = "entrypoint: running"
IGNORE_FILES = (".gitignore",)
DEPLOY_IGNORE = ".deployignore"
# Never shipped, whatever the ignore files say: secrets, history, environments, and what the run writes.
ALWAYS_EXCLUDED = (".git/", ".env", ".env.*", ".venv/", "__pycache__/", "*.pyc", f"{META}/", "lightning_logs/",
                   ".resume/", LOG, f"{LOG}.1")
MAX_TREE_BYTES = 1 << 30
RUNTIMES = ("auto", "compose", "native")


# --------------------------------------------------------------------------- choosing the runtime


def choose_runtime(requested: str, facts: HostFacts) -> tuple[str, str]:
    """``compose`` or ``native`` for one host, and why.

    ``auto`` keeps a native deploy native, picks compose on a host with a Docker engine and Compose,
    and native otherwise (RunPod pods)."""
    if requested not in RUNTIMES:
        raise ConfigError(f"The runtime {requested!r} is not one of {', '.join(RUNTIMES)}.")
    if requested != "auto":
        return requested, f"--runtime={requested}"
    if facts.native:
        return "native", "REMOTE_DIR holds a native deploy"
    if facts.docker and facts.compose_command:
        return "compose", f"the host has Docker {facts.docker} and {facts.compose_command}"
    if facts.docker:
        return "native", "the host has Docker but no Compose"
    return "native", "the host has no Docker engine"


# --------------------------------------------------------------------------- the working tree


@dataclass(frozen=True)
class IgnoreRule:
    """One line of a ``.gitignore``-style file, relative to the folder that holds it."""

    base: str  # "" for the tree's root, else "sub/dir/"
    regex: re.Pattern
    negate: bool
    dir_only: bool
    anchored: bool

    def matches(self, rel: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if self.base:
            if not rel.startswith(self.base):
                return False
            rel = rel[len(self.base):]
        return bool(self.regex.fullmatch(rel if self.anchored else posixpath.basename(rel)))


def _glob_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body[:1] in "!^" and body else body.replace("\\", "\\\\")) + "]")
            i = end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def parse_ignore(text: str, base: str = "") -> list[IgnoreRule]:
    """Rules from ``.gitignore`` syntax: ``#`` comments, ``!`` re-includes, ``dir/``, ``/anchored``, ``**``."""
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        elif line.startswith("\\"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        rules.append(IgnoreRule(base, re.compile(_glob_regex(line)), negate, dir_only, anchored))
    return rules


def ignored(rules: Iterable[IgnoreRule], rel: str, is_dir: bool) -> bool:
    """The last rule that matches decides, as in git."""
    verdict = False
    for rule in rules:
        if rule.matches(rel, is_dir):
            verdict = not rule.negate
    return verdict


_ALWAYS = parse_ignore("\n".join(ALWAYS_EXCLUDED))


@dataclass(frozen=True)
class LocalFile:
    """A file to ship: where it is here (``root``/``rel``), its size, whole-second mtime and exec bit."""

    root: str
    rel: str
    size: int
    mtime: int
    executable: bool = False

    @property
    def path(self) -> str:
        return os.path.join(self.root, *self.rel.split("/"))


def _stat_file(root: str, rel: str) -> LocalFile | None:
    try:
        st = os.stat(os.path.join(root, *rel.split("/")))
    except OSError:
        return None  # a dangling symlink
    if not stat.S_ISREG(st.st_mode):
        return None
    return LocalFile(root, rel, st.st_size, int(st.st_mtime), bool(st.st_mode & 0o100))


def select_files(root: str | os.PathLike[str], extra_ignore: str = DEPLOY_IGNORE) -> dict[str, LocalFile]:
    """The working tree's files to ship, by path relative to ``root``.

    Honours every ``.gitignore`` in the tree (each relative to its folder) and ``root/.deployignore``
    (same syntax, applied last so it can re-include with ``!``); :data:`ALWAYS_EXCLUDED` wins over both.
    """
    root = os.path.abspath(root)
    files: dict[str, LocalFile] = {}
    inherited: dict[str, list[IgnoreRule]] = {}
    extra = Path(root, extra_ignore)
    deploy_rules = parse_ignore(extra.read_text(errors="replace")) if extra.is_file() else []
    for current, dirs, names in os.walk(root):
        rel_dir = os.path.relpath(current, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        rules = list(inherited.get(rel_dir, []))
        for name in IGNORE_FILES:
            if name in names:
                rules += parse_ignore(Path(current, name).read_text(errors="replace"), rel_dir)
        keep = []
        for name in sorted(dirs):
            rel = rel_dir + name
            if ignored(_ALWAYS, rel, True) or ignored([*rules, *deploy_rules], rel, True):
                continue
            keep.append(name)
            inherited[rel + "/"] = rules
        dirs[:] = keep
        for name in sorted(names):
            rel = rel_dir + name
            if ignored(_ALWAYS, rel, False) or ignored([*rules, *deploy_rules], rel, False):
                continue
            found = _stat_file(root, rel)
            if found is not None:
                files[rel] = found
    return files


def library_files(repo: Path = REPO_ROOT) -> dict[str, LocalFile]:
    """gpu-deploy's ``deploy`` package, by its path under ``REMOTE_DIR`` (``.gpu-deploy/app/deploy/...``)."""
    out: dict[str, LocalFile] = {}
    for path in sorted((repo / "deploy").rglob("*.py")):
        rel = path.relative_to(repo).as_posix()
        found = _stat_file(str(repo), rel)
        if found is not None and "__pycache__" not in rel:
            out[f"{APP}/{rel}"] = found
    return out


def train_requirements(repo: Path = REPO_ROOT) -> tuple[str, ...]:
    """The project's ``train`` extra, from pyproject.toml (the one list the Dockerfile reads too)."""
    try:
        import tomllib

        with open(repo / "pyproject.toml", "rb") as handle:
            return tuple(tomllib.load(handle)["project"]["optional-dependencies"]["train"])
    except (ImportError, OSError, KeyError):
        from importlib.metadata import PackageNotFoundError, requires

        try:
            reqs = requires("gpu-deploy") or []
        except PackageNotFoundError as exc:
            raise ConfigError("Cannot read the train extra: pyproject.toml is missing and gpu-deploy is not "
                              "installed; run from a checkout of the project.") from exc
        return tuple(r.split(";")[0].strip() for r in reqs if "extra == \"train\"" in r.replace("'", "\""))


# --------------------------------------------------------------------------- desired, gathered, planned


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
    dataset: str | None = None
    data_dir: str = ""
    restart: bool = False
    local_rsync: bool = False
    stop_timeout: int = STOP_TIMEOUT
    max_restarts: int = 5

    @property
    def venv(self) -> str:
        return posixpath.join(self.remote_dir, VENV)

    def run_config(self) -> dict:
        """``run.json``: what the supervisor runs. No secrets: those stay in ``.env``, read on the host."""
        d = self.remote_dir
        return {
            "command": [posixpath.join(self.venv, "bin", "python"), "-m", "deploy.training.entrypoint"],
            "env": {"ENABLE_S3_SYNC": "1", "CHECKPOINT": "s3", "VIRTUAL_ENV": self.venv, "PYTHONUNBUFFERED": "1"},
            "prepend": {"PATH": [posixpath.join(self.venv, "bin")], "PYTHONPATH": [d, posixpath.join(d, APP)]},
            "max_restarts": self.max_restarts, "backoff": 1.0, "stop_timeout": float(self.stop_timeout),
        }

    def supervisor_files(self) -> dict[str, bytes]:
        return {"supervisor.py": (Path(__file__).resolve().parents[1] / "remote" / "supervisor.py").read_bytes(),
                "run.json": (json.dumps(self.run_config(), indent=2, sort_keys=True) + "\n").encode()}

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files.values())


@dataclass(frozen=True)
class BaseInterpreter:
    """``NATIVE_PYTHON`` on the host: what the run's virtualenv is made from and sees."""

    executable: str
    version: str
    site: tuple[str, ...] = ()
    torch: str | None = None
    has_venv: bool = True
    has_pip: bool = True

    @property
    def identity(self) -> str:
        return f"{self.executable} {self.version} torch {self.torch or 'none'}"

    @property
    def short_version(self) -> str:
        return ".".join(self.version.split(".")[:2])


@dataclass(frozen=True)
class NativeState:
    """What the host has now (read-only gathering)."""

    base: BaseInterpreter | None
    base_error: str = ""
    files: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # shipped files as they are: size, mtime
    manifest: frozenset[str] = frozenset()
    venv: Mapping[str, str] | None = None  # the virtualenv's marker; None when there is no usable one
    env_digest: str | None = None
    supervisor_digests: Mapping[str, str | None] = field(default_factory=dict)
    release: str | None = None
    compose_deploy: bool = False
    service: ServiceState = field(default_factory=lambda: ServiceState(exists=False))
    dataset_plan: object | None = None  # a datastage.StagePlan


@dataclass(frozen=True)
class Step:
    name: str
    detail: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def requirements_digest(desired: NativeDesired, base: BaseInterpreter | None) -> str:
    """What the virtualenv's packages depend on: the interpreter, its torch, both requirement lists."""
    return sha256(json.dumps({"base": base.identity if base else None, "train": list(desired.train_requirements),
                              "user": desired.user_requirements}, sort_keys=True).encode())


def release_digest(desired: NativeDesired, base: BaseInterpreter | None) -> str:
    """What a running process started from: code, settings, packages and supervisor. A change restarts it."""
    files = sorted((rel, f.size, f.mtime) for rel, f in desired.files.items())
    return sha256(json.dumps({"files": files, "env": desired.env.digest,
                              "requirements": requirements_digest(desired, base),
                              "supervisor": {n: sha256(b) for n, b in desired.supervisor_files().items()}},
                             sort_keys=True).encode())


@dataclass(frozen=True)
class NativePlan:
    spec: HostSpec
    desired: NativeDesired
    state: NativeState
    steps: tuple[Step, ...]
    send: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()
    method: str = "sftp"
    problems: tuple[str, ...] = ()
    reason: str = ""
    facts: HostFacts = field(default_factory=HostFacts)

    @property
    def noop(self) -> bool:
        return not self.steps

    def needs(self, name: str) -> bool:
        return any(s.name == name for s in self.steps)

    @property
    def send_bytes(self) -> int:
        return sum(self.desired.files[rel].size for rel in self.send)

    def describe(self) -> list[str]:
        d, base = self.desired, self.state.base
        python = (f"{d.python} = {base.executable} {base.version}, torch {base.torch or 'not installed'}"
                  if base else f"{d.python} (not found)")
        lines = [
            f"host      {self.spec}",
            f"runtime   native ({self.reason})",
            f"python    {python}; virtualenv {d.venv}",
            f"code      {len(d.files)} files, {d.bytes / 1e6:.1f} MB from {d.source} (and gpu-deploy's package)",
            f"env keys  {', '.join(d.env.keys)}",
        ]
        lines += [f"problem   {p}" for p in self.problems]
        if self.noop and not self.problems:
            lines.append("changes   none: training runs this code with these settings")
        lines += [f"change    {s.name}: {s.detail}" for s in self.steps]
        return lines


def plan_native(spec: HostSpec, desired: NativeDesired, state: NativeState, facts: HostFacts,
                reason: str = "") -> NativePlan:
    """Decide the steps from what the host has; pure, so the unit tests check it."""
    problems: list[str] = []
    base = state.base
    if base is None:
        problems.append(f"NATIVE_PYTHON ({desired.python}) does not run on the host ({state.base_error or 'not found'}); "
                        "set NATIVE_PYTHON to the interpreter that has the image's torch (e.g. /usr/bin/python3 "
                        "or /opt/conda/bin/python).")
    if state.compose_deploy:
        problems.append(f"{desired.remote_dir} holds a compose deploy ({SERVICE_FILE}); deploy there with "
                        "--runtime=compose, or choose another REMOTE_DIR for the native runtime.")
    if desired.bytes > MAX_TREE_BYTES:
        problems.append(f"The working tree {desired.source} is {desired.bytes / 1e9:.1f} GB; list large folders "
                        f"in {DEPLOY_IGNORE} (datasets go through DATASET and the bucket).")
    steps: list[Step] = []
    if not facts.remote_dir_exists:
        steps.append(Step("create-dir", f"create {desired.remote_dir}"))
    env_changed = state.env_digest != desired.env.digest
    if env_changed:
        steps.append(Step("write-env", f".env with {len(desired.env.keys)} keys, mode 0600"))
    send = tuple(sorted(rel for rel, f in desired.files.items() if state.files.get(rel) != (f.size, f.mtime)))
    delete = tuple(sorted(state.manifest - set(desired.files)))
    method = "rsync" if desired.local_rsync and "rsync" in facts.tools else "sftp"
    if send or delete:
        size = sum(desired.files[rel].size for rel in send)
        steps.append(Step("sync-code", f"{len(send)} files ({size / 1e6:.1f} MB) to send by {method}, "
                                       f"{len(delete)} to remove, {len(desired.files) - len(send)} unchanged"))
    venv_ok = (base is not None and state.venv is not None and state.venv.get("base") == base.identity)
    if not venv_ok:
        why = "none yet" if state.venv is None else "the interpreter changed"
        steps.append(Step("create-venv", f"{desired.python} -m venv --system-site-packages {desired.venv} ({why})"))
        if base is not None and not base.has_pip and not base.has_venv:
            problems.append(f"{base.executable} has neither pip nor the venv module; install them (Debian/Ubuntu: "
                            f"apt-get install python3-pip python{base.short_version}-venv) or set NATIVE_PYTHON to "
                            "another interpreter.")
    wanted = requirements_digest(desired, base)
    if not venv_ok or state.venv.get("requirements") != wanted:
        lists = "the train extra" + (f" and {REQUIREMENTS}" if desired.user_requirements is not None else "")
        pin = f", torch pinned to {base.torch}" if base and base.torch else ""
        steps.append(Step("install-requirements", f"pip install {lists} ({'changed' if venv_ok else 'new venv'}{pin})"))
    supervisor = {n: sha256(b) for n, b in desired.supervisor_files().items()}
    if any(state.supervisor_digests.get(n) != d for n, d in supervisor.items()):
        steps.append(Step("install-supervisor", ", ".join(f"{META}/{n}" for n in supervisor)))
    if state.dataset_plan is not None and not state.dataset_plan.noop:
        steps.append(Step("stage-dataset", state.dataset_plan.describe()))
    current = state.release == release_digest(desired, base)
    if desired.restart:
        steps.append(Step("restart", "restart the supervised entrypoint (resumes from the latest checkpoint in S3)"))
    elif not state.service.running or not current:
        why = "not running" if not state.service.running else "code, settings or packages changed"
        steps.append(Step("restart" if state.service.running else "start",
                          f"the supervised entrypoint ({why}; resumes from the latest checkpoint in S3)"))
    return NativePlan(spec=spec, desired=desired, state=state, steps=tuple(steps), send=send, delete=delete,
                      method=method, problems=tuple(problems), reason=reason, facts=facts)


# --------------------------------------------------------------------------- gathering


GATHER_SCRIPT = r"""
import hashlib, json, os, site, sys
d = sys.argv[1]
def load(path):
    try:
        with open(os.path.join(d, path)) as f: return json.load(f)
    except (OSError, ValueError): return None
def digest(path):
    try:
        with open(os.path.join(d, path), "rb") as f: return hashlib.sha256(f.read()).hexdigest()
    except OSError: return None
try:
    from importlib.metadata import version
    torch = version("torch")
except Exception:
    torch = None
try:
    import ensurepip, venv
    has_venv = True
except ImportError:
    has_venv = False
import importlib.util
has_pip = importlib.util.find_spec("pip") is not None
dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
user = site.getusersitepackages() if site.ENABLE_USER_SITE else ""
if user and os.path.isdir(user): dirs.append(user)
manifest = load(sys.argv[2]) or []
files = {}
for rel in manifest:
    try: st = os.stat(os.path.join(d, rel))
    except OSError: continue
    files[rel] = [st.st_size, int(st.st_mtime)]
venv_ok = os.path.exists(os.path.join(d, sys.argv[3], "bin", "python"))
try:
    with open(os.path.join(d, sys.argv[5], "supervisor.pid")) as f: pid = int(f.read().strip() or 0)
    with open("/proc/%d/cmdline" % pid, "rb") as f: alive = b"supervisor.py" in f.read()
except (OSError, ValueError):
    alive = False
print(json.dumps({
    "base": {"executable": sys.executable, "version": "%d.%d.%d" % sys.version_info[:3], "site": dirs,
             "torch": torch, "has_venv": has_venv, "has_pip": has_pip},
    "manifest": manifest, "files": files,
    "venv": (load(sys.argv[4]) or {}) if venv_ok else None,
    "supervisor": {n: digest(os.path.join(sys.argv[5], n)) for n in sys.argv[6].split(",")},
    "release": (load(sys.argv[7]) or {}).get("release"),
    "compose": os.path.exists(os.path.join(d, sys.argv[8])),
    "env": digest(".env"),
    "service": {"alive": alive, "state": load(os.path.join(sys.argv[5], "state.json"))},
}))
"""


def parse_gathered(output: str, error: str = "") -> NativeState:
    """The gather script's JSON as a :class:`NativeState` (the dataset plan is added by the caller)."""
    try:
        data = json.loads(output.strip().splitlines()[-1]) if output.strip() else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        lines = [line for line in error.strip().splitlines() if line.strip()]
        return NativeState(base=None, base_error=lines[-1][-200:] if lines else "no output")
    b = data["base"]
    base = BaseInterpreter(executable=b["executable"], version=b["version"], site=tuple(b.get("site") or ()),
                           torch=b.get("torch"), has_venv=bool(b.get("has_venv")), has_pip=bool(b.get("has_pip")))
    manifest = frozenset(data.get("manifest") or ())
    compose = bool(data.get("compose")) and SERVICE_FILE not in manifest
    service = data.get("service") or {}
    return NativeState(base=base, files={k: (int(v[0]), int(v[1])) for k, v in (data.get("files") or {}).items()},
                       manifest=manifest, venv=data.get("venv"), supervisor_digests=data.get("supervisor") or {},
                       release=data.get("release"), compose_deploy=compose, env_digest=data.get("env"),
                       service=service_state(bool(service.get("alive")), service.get("state") or {}))


def gather_native(conn, desired: NativeDesired, storage=None) -> NativeState:
    """Read the host in one pass: interpreter, shipped files, virtualenv, .env, supervisor, service; then the dataset."""
    args = [desired.remote_dir, MANIFEST, VENV, VENV_MARKER, META, ",".join(SUPERVISOR_FILES), RELEASE, SERVICE_FILE]
    # The script holds no secret, so it may travel as an argument.
    result = conn.run(f"{shlex.quote(desired.python)} -c {shlex.quote(GATHER_SCRIPT)} "
                      + " ".join(shlex.quote(a) for a in args), hide=True, warn=True, in_stream=False)
    state = parse_gathered(result.stdout if result.ok else "", result.stderr)
    if state.base is None:  # no interpreter ran the script: read what a shell can
        state = NativeState(**{**state.__dict__, "env_digest": remote_env_digest(conn, desired.remote_dir),
                               "service": NativeService(desired.remote_dir).state(conn)})
    if desired.dataset and storage is not None:
        from deploy.hosts.dataset import plan_for_host

        state = NativeState(**{**state.__dict__,
                               "dataset_plan": plan_for_host(conn, storage, desired.dataset, desired.data_dir)})
    return state


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class NativeService:
    """The supervised run in ``directory``: the compose project's state/logs/stop, for a native host."""

    directory: str

    @property
    def log_path(self) -> str:
        return posixpath.join(self.directory, LOG)

    def state_command(self) -> str:
        """A shell command that prints ``alive`` or ``gone``, then the supervisor's state.json."""
        meta = shlex.quote(posixpath.join(self.directory, META))
        return (f"(cd {meta} 2>/dev/null || exit 0; pid=$(cat supervisor.pid 2>/dev/null); "
                'if [ -n "$pid" ] && grep -q supervisor.py /proc/"$pid"/cmdline 2>/dev/null; '
                "then echo alive; else echo gone; fi; cat state.json 2>/dev/null)")

    def state(self, conn) -> ServiceState:
        return parse_service(conn.run(self.state_command(), hide=True, warn=True, in_stream=False).stdout)

    def logs(self, conn, tail: int = 100) -> str:
        return conn.run(self.logs_command(tail), hide=True, warn=True, in_stream=False).stdout

    def logs_command(self, tail: int = 100, follow: bool = False) -> str:
        return f"tail -n {int(tail)} {'-F ' if follow else ''}{shlex.quote(self.log_path)}"

    def _python(self) -> str:
        venv_python = shlex.quote(posixpath.join(self.directory, VENV, "bin", "python"))
        return f'P={venv_python}; [ -x "$P" ] || P=python3; "$P"'

    def start(self, conn) -> int:
        """Start the supervisor; returns the log offset from which this start's output runs."""
        script = shlex.quote(posixpath.join(self.directory, NATIVE_MARKER))
        result = conn.run(f"{self._python()} {script} start --dir {shlex.quote(self.directory)}", hide=True,
                          warn=True, in_stream=False)
        try:
            data = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            data = {"error": (result.stderr.strip() or result.stdout.strip() or f"exit {result.exited}")[-300:]}
        if "error" in data:
            raise HostError(f"The supervisor did not start in {self.directory}: {data['error']}")
        return int(data.get("log_offset", 0))

    def stop(self, conn, timeout: int = STOP_TIMEOUT) -> None:
        script = shlex.quote(posixpath.join(self.directory, NATIVE_MARKER))
        result = conn.run(f"{self._python()} {script} stop --dir {shlex.quote(self.directory)} --timeout {int(timeout)}",
                          hide=True, warn=True, in_stream=False)
        if not result.ok:
            raise HostError(f"Stopping the run in {self.directory} failed: "
                            f"{(result.stderr.strip() or result.stdout.strip())[-300:]}")


def parse_service(output: str) -> ServiceState:
    """The state command's output (``alive``/``gone``, then state.json) as a :class:`ServiceState`."""
    lines = output.strip().splitlines()
    if not lines:
        return ServiceState(exists=False)
    try:
        state = json.loads("\n".join(lines[1:])) if len(lines) > 1 else {}
    except ValueError:
        state = {}
    return service_state(lines[0].strip() == "alive", state if isinstance(state, dict) else {})


def service_state(alive: bool, state: Mapping) -> ServiceState:
    """Whether the supervisor lives and what its state.json says, as a :class:`ServiceState`."""
    if not state and not alive:
        return ServiceState(exists=False)
    status = state.get("status", "running" if alive else "absent")
    if not alive and status in ("starting", "running", "restarting", "stopping"):
        status = "dead"  # the pod restarted, or the supervisor was killed
    return ServiceState(exists=True, running=alive and status in ("starting", "running", "restarting"), status=status,
                        started_at=state.get("started_at", ""), restarts=int(state.get("restarts", 0)),
                        container=f"pid {state['child']}" if state.get("child") else "")


# --------------------------------------------------------------------------- executing


def _sftp_write(sftp, path: str, data: bytes) -> None:
    """Write a small file whole: a temporary name first, then a rename, so a reader never sees half of it."""
    tmp = f"{path}.tmp"
    try:
        with sftp.open(tmp, "wb") as handle:
            handle.write(data)
        sftp.posix_rename(tmp, path)
    except OSError as exc:
        raise HostError(f"Writing {path} over SFTP failed ({exc}); check that its folder exists and is "
                        "writable.") from exc


def _mkdirs(conn, spec: HostSpec, remote_dir: str, rels: Iterable[str]) -> None:
    dirs = sorted({posixpath.dirname(posixpath.join(remote_dir, rel)) for rel in rels})
    for i in range(0, len(dirs), 200):
        _run(conn, "mkdir -p " + " ".join(shlex.quote(d) for d in dirs[i:i + 200]), "Creating folders", spec)


def send_files(conn, plan: NativePlan, options: HostOptions, log: Callable[[str], None] = lambda s: None) -> None:
    """Copy the plan's changed files (rsync per local root, else SFTP), remove stale ones, record the manifest."""
    d = plan.desired
    if plan.send:
        _mkdirs(conn, plan.spec, d.remote_dir, plan.send)
    if plan.send and plan.method == "rsync":
        groups: dict[tuple[str, str], list[str]] = {}
        for rel in plan.send:
            f = d.files[rel]
            groups.setdefault((f.root, rel[: len(rel) - len(f.rel)]), []).append(f.rel)
        for (root, prefix), rels in groups.items():
            _rsync(plan.spec, options, root, rels, posixpath.join(d.remote_dir, prefix))
    elif plan.send:
        sftp = conn.sftp()
        for rel in plan.send:
            f = d.files[rel]
            final = posixpath.join(d.remote_dir, rel)
            tmp = posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}.part")
            try:
                sftp.put(f.path, tmp)
                sftp.utime(tmp, (f.mtime, f.mtime))
                sftp.chmod(tmp, 0o755 if f.executable else 0o644)
                sftp.posix_rename(tmp, final)
            except OSError as exc:
                raise HostError(f"Copying {f.path} to {plan.spec.host}:{final} failed ({exc}); check that "
                                f"{d.remote_dir} is writable and has space.") from exc
    if plan.delete:
        sftp = conn.sftp()
        for rel in plan.delete:
            try:
                sftp.remove(posixpath.join(d.remote_dir, rel))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise HostError(f"Removing {rel} from {d.remote_dir} on {plan.spec.host} failed ({exc}).") from exc
    _sftp_write(conn.sftp(), posixpath.join(d.remote_dir, MANIFEST), json.dumps(sorted(d.files)).encode())
    log(f"{plan.spec.host}: sent {len(plan.send)} files ({plan.send_bytes / 1e6:.1f} MB) by {plan.method}, "
        f"removed {len(plan.delete)}")


def _rsync(spec: HostSpec, options: HostOptions, root: str, rels: list[str], remote: str) -> None:
    from deploy.hosts.results import ssh_command

    cmd = ["rsync", "-tp", "--files-from=-", "-e", shlex.join(ssh_command(spec, options)), root.rstrip("/") + "/",
           f"{spec.user}@{spec.host}:{shlex.quote(remote.rstrip('/') + '/')}"]
    proc = subprocess.run(cmd, input="\n".join(rels) + "\n", capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no message"
        raise HostError(f"rsync to {spec.host}:{spec.port} failed (exit {proc.returncode}): {last}")


def _run(conn, command: str, what: str, spec: HostSpec, log_file: str | None = None) -> None:
    result = conn.run(command, hide=True, warn=True, in_stream=False)
    if result.ok:
        return
    detail = result.stderr.strip() or result.stdout.strip()
    if log_file:
        detail = conn.run(f"tail -n 5 {shlex.quote(log_file)}", hide=True, warn=True, in_stream=False).stdout.strip()
        detail += f" (full log: {log_file})"
    raise HostError(f"{what} failed on {spec.host}:{spec.port}: {detail[-1500:] or 'exit ' + str(result.exited)}")


def create_venv(conn, plan: NativePlan) -> None:
    """A virtualenv that sees what NATIVE_PYTHON sees: system site-packages, and a .pth for a venv interpreter."""
    d, base = plan.desired, plan.state.base
    assert base is not None
    # The interpreter's own pip serves the venv (it installs by the running interpreter's prefix); a
    # pip of the venv's own would also bring an old setuptools that shadows the image's.
    own_pip = "--without-pip " if base.has_pip else ""
    _run(conn, f"{shlex.quote(d.python)} -m venv --clear --system-site-packages {own_pip}{shlex.quote(d.venv)}",
         "Creating the virtualenv", plan.spec)
    site_dir = posixpath.join(d.venv, "lib", f"python{base.short_version}", "site-packages")
    sftp = conn.sftp()
    # --system-site-packages reaches the base installation only; when NATIVE_PYTHON is itself a
    # virtualenv (or has a user site), its own site-packages must be added, with their .pth files
    # (addsitedir). Folders already on sys.path are skipped.
    line = f"import site; list(map(site.addsitedir, {list(base.site)!r}))\n"
    _sftp_write(sftp, posixpath.join(site_dir, "gpu-deploy-base.pth"), line.encode())
    _sftp_write(sftp, posixpath.join(d.remote_dir, VENV_MARKER), json.dumps({"base": base.identity}).encode())


def install_requirements(conn, plan: NativePlan) -> None:
    """pip install the train extra and the tree's requirements.txt, torch held at the interpreter's build."""
    d, base = plan.desired, plan.state.base
    assert base is not None
    sftp = conn.sftp()
    meta = posixpath.join(d.remote_dir, META)
    _sftp_write(sftp, posixpath.join(meta, "requirements-train.txt"), ("\n".join(d.train_requirements) + "\n").encode())
    pins = f"torch=={base.torch}\n" if base.torch else ""
    _sftp_write(sftp, posixpath.join(meta, "constraints.txt"), pins.encode())
    args = ["-r", f"{META}/requirements-train.txt", "-c", f"{META}/constraints.txt"]
    if d.user_requirements is not None:
        args += ["-r", REQUIREMENTS]
    pip_log = posixpath.join(meta, "pip.log")
    _run(conn, f"cd {shlex.quote(d.remote_dir)} && {shlex.quote(posixpath.join(d.venv, 'bin', 'python'))} -m pip "
               f"install --disable-pip-version-check {shlex.join(args)} > {shlex.quote(pip_log)} 2>&1",
         "pip install", plan.spec, log_file=pip_log)
    marker = {"base": base.identity, "requirements": requirements_digest(d, base)}
    _sftp_write(sftp, posixpath.join(d.remote_dir, VENV_MARKER), json.dumps(marker).encode())


def wait_for_training(conn, service: NativeService, offset: int, timeout: float) -> ServiceState:
    """Poll until this start's output says training launched, or fail with the last log lines."""
    deadline = time.monotonic() + timeout
    log = shlex.quote(service.log_path)
    check = (f"if tail -c +{offset + 1} {log} 2>/dev/null | grep -q {shlex.quote(STARTED_MARKER)}; "
             f"then echo started; else echo waiting; fi; {service.state_command()}")
    state = ServiceState(exists=False)
    while time.monotonic() < deadline:
        first, _, rest = conn.run(check, hide=True, warn=True, in_stream=False).stdout.partition("\n")
        state = parse_service(rest)
        if first.strip() == "started" and state.running:
            return state
        if state.status in ("failed", "exited", "stopped", "dead") or state.restarts > 0:
            break
        time.sleep(1)
    tail = service.logs(conn, tail=15)
    raise HostError(f"Training did not start within {timeout:.0f} s (supervisor {state.status}, "
                    f"{state.restarts} restarts); last log lines:\n{tail}")


def execute_native(conn, plan: NativePlan, options: HostOptions, storage=None, wait: float = 300.0,
                   log: Callable[[str], None] = lambda s: None):
    """Perform the plan's steps in order; then wait for training to start."""
    from deploy.flow.rollout import DeployResult

    if plan.problems:
        raise HostError(f"{plan.spec.host}:{plan.spec.port}: {plan.problems[0]}")
    started = time.monotonic()
    d = plan.desired
    service = NativeService(d.remote_dir)
    done: list[str] = []
    offset: int | None = None
    if plan.steps:  # REMOTE_DIR and the folder for the runtime's own files
        _run(conn, f"mkdir -p {shlex.quote(posixpath.join(d.remote_dir, META))}", f"Creating {d.remote_dir}",
             plan.spec)
    for step in plan.steps:
        log(f"{plan.spec.host}: {step.name}: {step.detail}")
        if step.name == "write-env":
            ship_env(conn, d.remote_dir, d.env)
        elif step.name == "sync-code":
            send_files(conn, plan, options, log)
        elif step.name == "create-venv":
            create_venv(conn, plan)
        elif step.name == "install-requirements":
            install_requirements(conn, plan)
        elif step.name == "install-supervisor":
            sftp = conn.sftp()
            for name, data in d.supervisor_files().items():
                _sftp_write(sftp, posixpath.join(d.remote_dir, META, name), data)
        elif step.name == "stage-dataset":
            from deploy.hosts.dataset import execute_stage, plan_for_host

            assert storage is not None
            execute_stage(conn, storage, plan_for_host(conn, storage, d.dataset or "", d.data_dir))
        elif step.name in ("start", "restart"):
            if service.state(conn).running:
                service.stop(conn, timeout=d.stop_timeout)
            offset = service.start(conn)
            _sftp_write(conn.sftp(), posixpath.join(d.remote_dir, RELEASE),
                        json.dumps({"release": release_digest(d, plan.state.base)}).encode())
        done.append(step.name)
    state = service.state(conn) if offset is None else wait_for_training(conn, service, offset, wait)
    return DeployResult(spec=plan.spec, done=tuple(done), service=state, seconds=time.monotonic() - started,
                        follow=f"fab logs --follow --hosts={plan.spec}", runtime="native")


# --------------------------------------------------------------------------- wiring


def desired_native(rollout, spec: HostSpec, settings, source: str | os.PathLike[str] = ".") -> NativeDesired:
    """What one host should get: the rollout's .env and dataset, the tree in ``source``, NATIVE_PYTHON."""
    run = rollout.desired(spec, settings, rank=0, devices=1)
    source = os.path.abspath(source)
    files = {**select_files(source), **library_files()}
    user_reqs = Path(source, REQUIREMENTS).read_text() if REQUIREMENTS in files else None
    return NativeDesired(remote_dir=run.remote_dir, env=run.env, python=rollout.native_python, source=source,
                         files=files, train_requirements=train_requirements(), user_requirements=user_reqs,
                         dataset=run.dataset, data_dir=run.data_dir, restart=rollout.restart,
                         local_rsync=bool(shutil.which("rsync") and shutil.which("ssh")))


def deploy_native(conn, spec: HostSpec, rollout, settings, options: HostOptions, facts: HostFacts, reason: str,
                  storage=None, dry_run: bool = False, log: Callable[[str], None] = print):
    """One host, native runtime: gather, plan, print the plan, execute unless ``dry_run``."""
    desired = desired_native(rollout, spec, settings)
    plan = plan_native(spec, desired, gather_native(conn, desired, storage), facts, reason)
    log("\n".join(plan.describe()))
    if plan.problems:
        raise HostError(f"{spec.host}:{spec.port}: {plan.problems[0]}")
    return None if dry_run else execute_native(conn, plan, options, storage, wait=rollout.wait, log=log)
