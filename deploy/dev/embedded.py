"""Embedded servers on loopback: an OpenSSH server and moto's S3 server, each on a free port.

The demo (``scripts/demo``) runs the whole loop against them with no cloud account, and the tests
and benchmarks stand on them. Plain classes: start, poll for readiness, stop.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from deploy.dev.waiting import wait_until

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    """Poll ``predicate`` until it is true (an ``OSError`` means not yet); fail naming ``what``."""
    wait_until(predicate, timeout, what, interval=0.1, proc=proc, log=log, ignore=(OSError,))


def _ssh_banner(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        return sock.recv(4).startswith(b"SSH-")


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class SshServer:
    """An `sshd` on 127.0.0.1 with host and client keys generated in ``workdir``.

    ``path`` is the PATH the sshd gives its sessions, so a test can hide a tool (docker) from the
    deploying user; ``env`` adds variables to its sessions (``DOCKER_HOST``: a host whose Docker is
    another engine).
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    user: str = field(default_factory=getpass.getuser)
    path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def client_key(self) -> Path:
        return self.workdir / "id_ed25519"

    @property
    def host_key(self) -> Path:
        return self.workdir / "ssh_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    def start(self) -> "SshServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        shutil.copy(f"{self.client_key}.pub", self.workdir / "authorized_keys")
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        config = self.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin yes",
                    "PermitUserEnvironment no",
                    # sshd takes only its first SetEnv line: every variable goes on this one.
                    " ".join(["SetEnv", f"PATH={self.path}", *(f"{k}={v}" for k, v in self.env.items())]),
                    "Subsystem sftp internal-sftp",
                    "MaxSessions 50",
                    "MaxStartups 50:30:100",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
        log = self.workdir / "sshd.log"
        # Output goes to a file: a pipe nobody reads would fill up and stall the server.
        with log.open("ab") as out:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=out)
        wait_for(lambda: _ssh_banner(self.port), 20, f"sshd on port {self.port}", self.proc, log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def connect_kwargs(self) -> dict:
        return {"key_filename": [str(self.client_key)], "look_for_keys": False, "allow_agent": False}

    def connection(self):
        """A Fabric `Connection` to this server, host key checked against our known_hosts."""
        from fabric import Config, Connection

        config = Config(overrides={"load_ssh_configs": False, "run": {"in_stream": False}})
        conn = Connection(
            "127.0.0.1", user=self.user, port=self.port, config=config,
            connect_kwargs=self.connect_kwargs(), connect_timeout=10,
        )
        conn.client.load_host_keys(str(self.known_hosts))
        return conn


@dataclass
class S3Server:
    """moto's standalone S3 server as a subprocess on a free loopback port, reached over HTTP."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    access_key: str = "testing-access-key"
    secret_key: str = "testing-secret-key-0123456789"
    region: str = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1) as resp:
            return resp.status == 200

    def start(self) -> "S3Server":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "moto.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=out,
            )
        wait_for(self._ready, 30, f"moto S3 server on port {self.port}", self.proc, log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def environ(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The settings a task needs to reach this server, as `.env` keys."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "S3_BUCKET": bucket,
            "S3_PREFIX": prefix,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )
