"""OpenSSH sessions we start for the user (``fab ssh``'s shell, ``fab tensorboard``'s tunnel), and their failures.

ssh exits 255 when it could not connect, and otherwise with the status of what ran on the host: a shell
the user leaves with ``exit 255`` looks the same. So each session tells us itself: ssh's own messages go
to a log file (``-E``), not the terminal, and ``LocalCommand`` touches a marker file once ssh has
connected and logged in. A session that never connected is our failure, one sentence from ssh's log
(:func:`ssh_failure`); a session that did is the user's, and its status is theirs.

Example::

    session = Session(ssh_command(spec, options), ["-t", "root@203.0.113.7", "exec $SHELL -l"], spec, options)
    code = session.run()        # HostError when ssh could not connect; else the shell's own status
"""

from __future__ import annotations

import http.client
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from deploy.errors import HostError
from deploy.hosts.ssh import HostOptions, HostSpec
from deploy.hosts.text import printable

_WORDS = (
    ("Could not resolve hostname", "the name {host} does not resolve"),
    ("Name or service not known", "the name {host} does not resolve"),
    ("Connection refused", "nothing listens on port {port} of {host}"),
    ("No route to host", "there is no route to {host}"),
    ("banner exchange", "it accepted the connection but sent no SSH greeting within {timeout} s"),
    ("kex_exchange_identification", "it closed the connection before the SSH greeting (is it an SSH port?)"),
    ("timed out", "it did not accept a connection within {timeout} s (a firewall drops it, or the address is wrong)"),
)


def ssh_failure(log: str, spec: HostSpec, options: HostOptions) -> HostError:
    """One sentence for an ssh that did not connect, from what it wrote to its log (``-E``)."""
    lines = [line.strip() for line in log.splitlines() if line.strip() and not line.startswith("Pseudo-terminal")]
    text = "\n".join(lines)
    key = options.key_file or "your SSH agent and ~/.ssh keys"
    if "Permission denied" in text or "bad permissions" in text:
        return HostError(f"{spec} refused authentication with {key}; check RUNPOD_SSH_KEY and RUNPOD_USER, and that "
                         "the public key is in the host's authorized_keys.")
    if "IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
        return HostError(f"The host key of {spec.host}:{spec.port} is not the one recorded in {options.known_hosts}; "
                         f"if the host was rebuilt, remove the old entry with `ssh-keygen -R '{spec.known_hosts_name}' "
                         f"-f {options.known_hosts}`, otherwise do not connect.")
    for marker, words in _WORDS:
        if marker in text:
            reason = words.format(host=spec.host, port=spec.port, timeout=f"{options.connect_timeout:g}")
            return HostError(f"Cannot reach {spec.host}:{spec.port} over SSH: {reason}; check {spec.fix()}.")
    said = printable(lines[-1]) if lines else "it said nothing"
    return HostError(f"ssh to {spec} did not connect: {said}")


class Session:
    """One ssh process of ours: ``ssh`` (with the options of :func:`deploy.hosts.ssh.ssh_command`) + ``args``."""

    def __init__(self, ssh: Sequence[str], args: Sequence[str], spec: HostSpec, options: HostOptions) -> None:
        self.spec, self.options = spec, options
        self._folder = tempfile.TemporaryDirectory(prefix="gpu-deploy-ssh-")
        self.marker = Path(self._folder.name) / "connected"
        self.log = Path(self._folder.name) / "ssh.log"
        # LogLevel=ERROR: ssh's own notices ("Connection to ... closed.") stay off the user's terminal too.
        self.argv = [*ssh, "-E", str(self.log), "-o", "LogLevel=ERROR", "-o", "PermitLocalCommand=yes",
                     "-o", f"LocalCommand=touch {shlex.quote(str(self.marker))}", *args]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def connected(self) -> bool:
        """ssh logged in: from here on, how the session ends is the user's (or the host's) business."""
        return self.marker.exists()

    def failure(self) -> HostError:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return ssh_failure(text, self.spec, self.options)

    def run(self) -> int:
        """Run in the foreground, on this terminal; the session's status, or a HostError when ssh did not connect.

        Ctrl-C belongs to the remote shell meanwhile (ssh puts the terminal in raw mode; without a
        terminal it would end ssh, which then says so)."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            code = subprocess.run(self.argv, check=False).returncode
        finally:
            signal.signal(signal.SIGINT, previous)
        return self._status(code)

    def start(self) -> None:
        """Start in the background (a tunnel)."""
        self.proc = subprocess.Popen(self.argv)

    def wait_ready(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        """Until ssh has logged in and ``ready()`` (what it carries answers); a HostError when ssh ends first
        (ssh's own failure when it never connected) or ``timeout`` passes."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self._status(self.proc.returncode)
                raise HostError(f"{what} on {self.spec} did not start: ssh ended with exit {code}; what the host said "
                                "is above.")
            if self.connected and ready():
                return
            time.sleep(0.2)
        self.stop()
        raise HostError(f"{what} on {self.spec} did not answer through the tunnel within {timeout:g} s.")

    def wait(self) -> int:
        """The background session's status once it ends (a HostError if it never connected)."""
        assert self.proc is not None
        return self._status(self.proc.wait())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        self._folder.cleanup()

    def _status(self, code: int) -> int:
        if code != 0 and not self.connected:
            raise self.failure()
        return code

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def answers_http(port: int) -> Callable[[], bool]:
    """Whether an HTTP server answers on this machine's ``port`` (through a tunnel: the one on the host)."""

    def ready() -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("HEAD", "/")
            connection.getresponse()
        except (OSError, http.client.HTTPException):
            return False  # no listener yet, or ssh closed the forward: nothing listens on the host's side yet
        finally:
            connection.close()
        return True

    return ready


def remote_shell(spec: HostSpec, workdir: str) -> list[str]:
    """ssh's arguments for an interactive login shell in ``workdir``."""
    return ["-t", f"{spec.user}@{spec.host}", f"cd {shlex.quote(workdir)} 2>/dev/null; exec $SHELL -l"]

