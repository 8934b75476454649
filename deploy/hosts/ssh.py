"""SSH hosts: who to connect to, and a Fabric `Connection` that fails with one clear sentence.

Host keys follow OpenSSH's ``accept-new``: a known host must present its recorded key (a changed
key is refused), a new host's key is accepted on first use and recorded, and strict mode refuses
unknown hosts too. Unreachable hosts fail within the connect timeout naming host and port; an
authentication failure names the key that was tried.

Example::

    spec = HostSpec.parse("root@203.0.113.10:40022")
    with connect(spec, HostOptions(key_file="~/.ssh/id_ed25519")) as conn:
        conn.run("nvidia-smi")
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection

from deploy.errors import ConfigError, DeployError, HostError
from deploy.hosts.text import printable
from deploy.reach import Silent, causes, greeting, why
from deploy.settings import Settings, folder_problem, normal_folder

RUNPOD_PROXY_SUFFIX = "ssh.runpod.io"


@dataclass(frozen=True)
class HostSpec:
    """One SSH destination: ``user@host:port``."""

    host: str
    port: int = 22
    user: str = "root"
    remote_dir: str | None = None
    """This host's own REMOTE_DIR, when it differs from the setting (``host:port/workspace/run``)."""
    origin: str = field(default="", compare=False)
    """Where this address came from, as what to check when it does not work: ``RUNPOD_HOST (from the
    environment)``, ``the --hosts flag``, ``.gpu-deploy/pods.json`` ..."""

    @classmethod
    def parse(cls, text: str, default_port: int = 22, default_user: str = "root", origin: str = "") -> "HostSpec":
        """Parse ``[user@]host[:port][/remote/dir]`` (``[v6addr]:port`` too); defaults fill the rest."""
        text = text.strip()
        if not text:
            raise ConfigError("An empty host was given; use user@host:port.")
        remote_dir = None
        slash = text.find("/")
        if slash > 0:
            text, remote_dir = text[:slash], host_folder(text[slash:], f"The folder in {text!r}")
        user, _, hostport = text.rpartition("@")
        host, port = hostport, default_port
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            if rest.startswith(":"):
                port = _port(rest[1:], text)
        elif hostport.count(":") == 1:
            host, raw = hostport.split(":")
            port = _port(raw, text)
        if not host:
            raise ConfigError(f"The host {text!r} has no address; use user@host:port.")
        return cls(host=host, port=port, user=user or default_user, remote_dir=remote_dir, origin=origin)

    def fix(self) -> str:
        """What to check when this host cannot be reached: where its address came from."""
        return self.origin or "the host's address and port"

    def workdir(self, default: str) -> str:
        """Where this host's run lives: its own folder (``host:port/dir``), else ``default``: REMOTE_DIR, which the
        settings checked and normalised (:func:`deploy.settings.folder_problem`)."""
        return self.remote_dir or default

    @property
    def is_runpod_proxy(self) -> bool:
        """RunPod's basic proxy SSH (``<pod>@ssh.runpod.io``): a shell only, no SFTP or scp."""
        return self.host == RUNPOD_PROXY_SUFFIX or self.host.endswith("." + RUNPOD_PROXY_SUFFIX)

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}{self.remote_dir or ''}"


def host_folder(path: str, what: str = "The folder") -> str:
    """A folder on a host in normal form (``/dir//sub/`` is ``/dir/sub``), or a ConfigError naming ``what``; the
    rule is REMOTE_DIR's (:func:`deploy.settings.folder_problem`). Commands still quote every folder."""
    problem = folder_problem(path)
    if problem:
        raise ConfigError(f"{what} {path!r} {problem}.")
    return normal_folder(path)


def _port(raw: str, text: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"The port in {text!r} is not a number from 1 to 65535.")
    return int(raw)


@dataclass(frozen=True)
class HostOptions:
    """How to connect: key, known_hosts file, strictness, timeout."""

    key_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    strict_host_keys: bool = False
    connect_timeout: float = 10.0
    key_origin: str = field(default="RUNPOD_SSH_KEY", compare=False)
    """Where ``key_file`` came from, for the sentence when it cannot be used."""

    @classmethod
    def from_settings(cls, settings: Settings) -> "HostOptions":
        return cls(key_file=settings.runpod_ssh_key, known_hosts=settings.ssh_known_hosts,
                   strict_host_keys=settings.ssh_strict_host_keys,
                   connect_timeout=float(settings.ssh_connect_timeout), key_origin=settings.check("RUNPOD_SSH_KEY"))


def hosts_from(settings: Settings, hosts: str | Iterable[str] | None = None, origin: str = "") -> list[HostSpec]:
    """The hosts a task works on: ``hosts`` (a flag or fab's -H, comma separated; ``origin`` names it) or
    RUNPOD_HOST."""
    if isinstance(hosts, str):
        hosts = [h for h in hosts.split(",") if h.strip()]
    names = list(hosts or [])
    if not names:
        settings.require("RUNPOD_HOST")
        assert settings.runpod_host is not None
        names = [h for h in settings.runpod_host.split(",") if h.strip()]
        origin = settings.check("RUNPOD_HOST")
        if settings.source("RUNPOD_PORT") != "default":
            origin += f" and {settings.check('RUNPOD_PORT')}"
    specs = [HostSpec.parse(n, settings.runpod_port, settings.runpod_user, origin) for n in names]
    seen: set[tuple[str, int]] = set()
    for spec in specs:
        if (spec.host, spec.port) in seen:
            raise ConfigError(f"The host {spec.host}:{spec.port} is listed twice.")
        seen.add((spec.host, spec.port))
    return specs


class AcceptNewHostKeys(paramiko.MissingHostKeyPolicy):
    """OpenSSH's ``StrictHostKeyChecking=accept-new``: record new hosts, never accept a changed key.

    Changed keys never reach this policy: paramiko raises BadHostKeyException for them.
    """

    def __init__(self, known_hosts: Path, strict: bool) -> None:
        self.known_hosts = known_hosts
        self.strict = strict

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self.strict:
            raise HostError(
                f"The host key of {hostname} is not in {self.known_hosts} and strict host key checking "
                f"is on; add it (ssh-keyscan) or turn SSH_STRICT_HOST_KEYS off to accept it on first use.")
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.known_hosts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def check_key_file(key_file: str, origin: str = "RUNPOD_SSH_KEY") -> str:
    """The key file's path, refused unless only its owner can read it (``origin``: where the path came from).

    OpenSSH (and so rsync) refuses a private key that group or others can read while paramiko uses
    it, so the SFTP and rsync paths would disagree; refusing it here makes both fail alike, at once.
    """
    key = os.path.expanduser(key_file)
    if not os.path.isfile(key):
        raise ConfigError(f"The SSH key file {key} does not exist; check {origin}.")
    mode = stat.S_IMODE(os.stat(key).st_mode)
    if mode & 0o077:
        raise ConfigError(f"The SSH key file {key} can be read by others (mode {mode:04o}), so ssh refuses it; "
                          f"run `chmod 600 {key}`.")
    return key


def connection(spec: HostSpec, options: HostOptions = HostOptions()) -> Connection:
    """A Fabric `Connection` (not yet open) with our host key policy and quiet, non-interactive runs."""
    config = Config(overrides={
        "load_ssh_configs": False,
        "run": {"in_stream": False, "hide": True},
        "timeouts": {"connect": options.connect_timeout},
    })
    connect_kwargs: dict = {"banner_timeout": options.connect_timeout, "auth_timeout": options.connect_timeout}
    if options.key_file:
        key = check_key_file(options.key_file, options.key_origin)
        connect_kwargs.update(key_filename=[key], look_for_keys=False)
    conn = Connection(spec.host, user=spec.user, port=spec.port, config=config,
                      connect_timeout=int(options.connect_timeout), connect_kwargs=connect_kwargs)
    known_hosts = Path(os.path.expanduser(options.known_hosts))
    if known_hosts.is_file():
        conn.client.load_host_keys(str(known_hosts))
    conn.client.set_missing_host_key_policy(AcceptNewHostKeys(known_hosts, options.strict_host_keys))
    return conn


def connect(spec: HostSpec, options: HostOptions = HostOptions()) -> Connection:
    """Open a connection to ``spec``, or raise a :class:`HostError` that says what to check."""
    conn = connection(spec, options)
    key = options.key_file or "your SSH agent and ~/.ssh keys"
    try:
        conn.open()
    except HostError:
        raise
    except paramiko.BadHostKeyException as exc:
        raise HostError(
            f"The host key of {spec.host}:{spec.port} has changed since it was recorded in "
            f"{options.known_hosts}; if the host was rebuilt, remove the old entry with "
            f"`ssh-keygen -R '{spec.known_hosts_name}' -f {options.known_hosts}`, otherwise do not connect.") from exc
    except paramiko.AuthenticationException as exc:
        raise HostError(f"{spec} refused authentication with {key}; check RUNPOD_SSH_KEY and RUNPOD_USER, "
                        "and that the public key is in the host's authorized_keys.") from exc
    except (socket.timeout, TimeoutError, paramiko.ssh_exception.NoValidConnectionsError,
            ConnectionError, socket.gaierror, OSError, EOFError, paramiko.SSHException) as exc:
        raise unreachable(spec, exc, options.connect_timeout) from exc
    return conn


def unreachable(spec: HostSpec, exc: BaseException, timeout: float) -> HostError:
    """The one sentence for a host that cannot be reached over SSH: why, in words, and where its address came from."""
    said = [str(e).lower() for e in causes(exc) if isinstance(e, paramiko.SSHException)]
    if any("banner" in text for text in said):
        reason = f"it accepted the connection but sent no SSH greeting within {timeout:g} s"
    elif any("no existing session" in text for text in said):  # the transport died before it could log in
        reason = f"it accepted the connection but did not finish the SSH handshake within {timeout:g} s"
    else:
        reason = why(exc, spec.host, spec.port, timeout, timeout)
    return HostError(f"Cannot reach {spec.host}:{spec.port} over SSH: {reason}; check {spec.fix()}"
                     + (" (on RunPod: the pod's public IP and exposed TCP port)." if not spec.origin else "."))


def reach_host(spec: HostSpec, options: HostOptions, timeout: float) -> None:
    """Fail in seconds, in one sentence, unless an SSH server answers at ``spec``: its key file first (a local
    check), then a TCP connect and its greeting (``SSH-2.0-...``) within ``timeout``."""
    if options.key_file:
        check_key_file(options.key_file, options.key_origin)
    try:
        line = greeting(spec.host, spec.port, timeout)
    except Silent:
        raise HostError(f"Cannot reach {spec.host}:{spec.port} over SSH: it accepted the connection but sent no SSH "
                        f"greeting within {timeout:g} s (is it an SSH port?); check {spec.fix()}.") from None
    except OSError as exc:
        raise unreachable(spec, exc, timeout) from None
    if not line.startswith("SSH-"):
        raise HostError(f"{spec.host}:{spec.port} is not an SSH server: it answered {printable(line[:60])!r}; "
                        f"check {spec.fix()}.")


def ssh_command(spec: HostSpec, options: HostOptions) -> list[str]:
    """An OpenSSH command line with the same key, known_hosts and strictness as our connections."""
    cmd = ["ssh", "-p", str(spec.port), "-o", "BatchMode=yes",
           "-o", f"ConnectTimeout={int(options.connect_timeout)}",
           "-o", f"UserKnownHostsFile={os.path.expanduser(options.known_hosts)}",
           "-o", f"StrictHostKeyChecking={'yes' if options.strict_host_keys else 'accept-new'}"]
    if options.key_file:
        cmd += ["-i", check_key_file(options.key_file, options.key_origin), "-o", "IdentitiesOnly=yes"]
    return cmd


def require_sftp(spec: HostSpec) -> None:
    """Refuse RunPod's proxy SSH before a file transfer fails obscurely on it."""
    if spec.is_runpod_proxy:
        raise HostError(
            f"{spec.host} is RunPod's proxy SSH, which has no SFTP or scp; file transfer needs the pod's "
            "exposed TCP port: set RUNPOD_HOST to the public IP and RUNPOD_PORT to the mapped SSH port.")


@dataclass(frozen=True)
class Outcome:
    spec: HostSpec
    result: Any = None
    error: DeployError | None = None


def for_each_host(specs: list[HostSpec], work: Callable[[HostSpec], Any]) -> list[Outcome]:
    """Run ``work`` on every host in parallel and collect every host's outcome (fabric Group style)."""

    def one(spec: HostSpec) -> Outcome:
        try:
            return Outcome(spec, result=work(spec))
        except DeployError as exc:
            return Outcome(spec, error=exc)

    if len(specs) <= 1:  # none: every host named was found dead before (a pool of 0 workers is an error)
        return [one(spec) for spec in specs]
    with ThreadPoolExecutor(max_workers=min(8, len(specs))) as pool:
        return list(pool.map(one, specs))
