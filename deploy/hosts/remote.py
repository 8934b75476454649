"""Running things on a host: one command helper, one atomic file write, the host-side programs' source.

Every remote command is built from a list (``shlex.join``), so no caller quotes by hand, and a
failure becomes one :class:`HostError` sentence with the real cause: the meaningful line of stderr,
or the tail of the log file the command wrote. Every file deploy writes on a host goes through
:func:`write_atomic`: the temporary file carries its final mode from the first byte, is created
exclusively (a link planted at its name is never followed), and is renamed over the target, so a
reader sees the old file or the new one, never half of it.

Example::

    run(conn, ["mkdir", "-p", "/workspace/run"], "Creating /workspace/run")
    write_atomic(conn, "/workspace/run/.env", b"S3_BUCKET=b\\n", mode=0o600)
"""

from __future__ import annotations

import codecs
import posixpath
import re
import secrets
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, IO, TYPE_CHECKING, TextIO

from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_TRUNC, SFTP_FLAG_WRITE
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_client import SFTPClient
from paramiko.sftp_file import SFTPFile

from deploy.errors import HostError
from deploy.hosts.text import PrintableStream, printable

if TYPE_CHECKING:
    from fabric import Connection

CHUNK = 32 * 1024  # paramiko's own SFTP write size, and what a stream reads at once
# Lines that name a cause, in the order a person would look for them.
_CAUSE = re.compile(r"denied|unprotected|refused|not found|no such|cannot|can't|could not|error|failed|invalid|"
                    r"verification|timed out|no space|read-only", re.IGNORECASE)
_SSH_BANNER = re.compile(r"UNPROTECTED PRIVATE KEY FILE|REMOTE HOST IDENTIFICATION HAS CHANGED|"
                         r"Host key verification failed")


def where(conn: Connection) -> str:
    """``host:port`` of a Fabric Connection, ``localhost`` for an invoke Context."""
    host = getattr(conn, "host", None)
    return f"{host}:{getattr(conn, 'port', 22)}" if host else "localhost"


def cause(text: str, limit: int = 300) -> str:
    """The line of ``text`` (a command's stderr, a log tail) that says what went wrong.

    What the host wrote is made safe to print first (:func:`deploy.hosts.text.printable`). ssh's own
    verdicts come first (``UNPROTECTED PRIVATE KEY FILE`` is a banner, the
    ``Permission denied`` after it is its consequence: both are kept); then the last line naming a
    cause (``ERROR: ...``, an exception), never rsync's closing ``rsync error: ...`` summary; else
    the last line.
    """
    lines = [clean for line in text.strip().splitlines() if (clean := printable(line).strip(" @\t"))]
    if not lines:
        return ""
    named = [line for line in lines if _CAUSE.search(line) and not line.startswith("rsync error:")]
    last = named[-1] if named else lines[-1]
    banner = next((line for line in lines if _SSH_BANNER.search(line)), "")
    return (f"{banner}; {last}" if banner and banner != last else last)[-limit:]


def command(argv: Sequence[str], cwd: str | None = None, log_file: str | None = None) -> str:
    """A shell command line from a list; ``cwd`` first, all output to ``log_file`` when given."""
    line = shlex.join(argv)
    if cwd:
        line = f"cd {shlex.quote(cwd)} && {line}"
    if log_file:
        line = f"{line} > {shlex.quote(log_file)} 2>&1"
    return line


def run(conn: Connection, argv: Sequence[str], what: str, *, cwd: str | None = None, log_file: str | None = None,
        warn: bool = False) -> Any:
    """Run ``argv`` on ``conn``; on failure raise ``HostError("<what> failed on host:port: <cause>")``.

    ``log_file``: the command's output goes there and a failure quotes its last lines instead of
    stderr. ``warn=True`` returns a failed result instead of raising (for commands that may fail).
    """
    return run_line(conn, command(argv, cwd, log_file), what, log_file=log_file, warn=warn)


def run_line(conn: Connection, line: str, what: str, *, log_file: str | None = None, warn: bool = False,
             timeout: float | None = None) -> Any:
    """:func:`run` for a shell line made of :func:`command` pieces (``;``, pipes, redirections); a command
    still running after ``timeout`` seconds is a failure too."""
    from invoke.exceptions import CommandTimedOut

    try:
        result = conn.run(line, hide=True, warn=True, in_stream=False, timeout=timeout)
    except CommandTimedOut:
        raise HostError(f"{what} failed on {where(conn)}: no answer within {timeout:.0f} s.") from None
    if result.ok or warn:
        return result
    raise HostError(failure(conn, what, result, log_file))


@dataclass(frozen=True)
class Part:
    """What one command of :func:`run_together` printed on stdout, and its exit code."""

    stdout: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0


def run_together(conn: Connection, commands: Sequence[Sequence[str] | str], what: str) -> list[Part]:
    """Run read-only ``commands`` (argv lists, or shell lines made of :func:`command` pieces) one after the other
    in one round trip, each whatever the others did; each one's stdout and exit code, in order.

    One command per round trip costs a session and the user's login shell each time (conda or pyenv set up in
    ``.bashrc`` take a good part of a second), so facts a deploy reads together travel together. Each command's
    output ends at a line with a marker no output can hold by chance (a random token) and its exit code; stderr
    is not split (these commands are read with ``warn=True`` and judged by their output).
    """
    mark = f"@@gpu-deploy-{secrets.token_hex(8)}"
    script = "".join(f"( {c if isinstance(c, str) else shlex.join(c)}\n) </dev/null; "  # a subshell: exit ends it only
                     f"printf '\\n{mark} %s\\n' \"$?\"; " for c in commands)
    text = run_line(conn, script, what, warn=True).stdout
    parts: list[Part] = []
    for _ in commands:
        out, sep, rest = text.partition(f"\n{mark} ")
        code, _nl, text = rest.partition("\n")
        parts.append(Part(out, int(code) if sep and code.strip().lstrip("-").isdigit() else -1))
    return parts


def stream(conn: Connection, line: str, out: TextIO) -> int:
    """Run the shell ``line`` on ``conn``, its output (stderr in the same stream, where the host wrote it)
    printed to ``out`` as it arrives through :class:`PrintableStream`; return its exit code.

    Not ``conn.run``: invoke keeps everything a command prints (and joins it all again for each new
    chunk), which a ``fab logs --follow`` that runs for days cannot afford. Here a chunk is decoded (a
    character split across two chunks stays whole), cleaned and printed, then dropped.
    """
    channel = conn.create_session()
    try:
        channel.set_combine_stderr(True)
        channel.exec_command(line)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with PrintableStream(out) as printed:
            while chunk := channel.recv(CHUNK):
                printed.write(decoder.decode(chunk))
            printed.write(decoder.decode(b"", final=True))
        return channel.recv_exit_status()
    finally:
        channel.close()


def failure(conn: Connection, what: str, result: Any, log_file: str | None = None) -> str:
    """The one sentence for a failed remote command."""
    if log_file:
        tail = conn.run(shlex.join(["tail", "-n", "20", log_file]), hide=True, warn=True, in_stream=False).stdout
        detail = f"{cause(tail) or 'no output'} (full log: {log_file})"
    else:
        detail = cause(result.stderr) or cause(result.stdout) or f"exit {result.exited}"
    return f"{what} failed on {where(conn)}: {detail}"


def sftp_of(target: Any) -> SFTPClient:
    """The SFTP client of a Fabric Connection, or ``target`` itself when it already is one."""
    return target if isinstance(target, SFTPClient) else target.sftp()


def make_dirs(target: Any, path: str) -> None:
    """``mkdir -p path`` over SFTP: a folder that exists costs one SFTP request, and no command runs, so the
    user's login shell (its ``.bashrc``: conda or pyenv set up there take a good part of a second) is not started.

    ``target`` is a Fabric Connection or a paramiko SFTP client. As ``mkdir -p``, an existing link to a folder
    counts as the folder; a file in the way is a :class:`HostError`.
    """
    sftp = sftp_of(target)
    missing: list[str] = []
    folder = posixpath.normpath(path)
    while folder not in ("/", "."):
        try:
            if not stat.S_ISDIR(sftp.stat(folder).st_mode or 0):
                raise HostError(f"Creating {path} on the host failed: {folder} is there and is not a folder.")
            break
        except FileNotFoundError:
            missing.append(folder)
            folder = posixpath.dirname(folder)
        except OSError as exc:
            raise HostError(f"Creating {path} on the host failed: {folder} cannot be read "
                            f"({exc.strerror or exc}).") from exc
    for folder in reversed(missing):
        try:
            sftp.mkdir(folder, 0o755)
        except OSError as exc:  # made meanwhile by someone else: fine when it is a folder now
            try:
                made = stat.S_ISDIR(sftp.stat(folder).st_mode or 0)
            except OSError:
                made = False
            if not made:
                raise HostError(f"Creating {folder} on the host failed ({exc.strerror or exc}); check that its "
                                "parent is writable.") from exc


def write_atomic(target: Any, path: str, data: bytes | IO[bytes], mode: int = 0o600,
                 mtime: int | None = None) -> None:
    """Write ``path`` on the host whole, with ``mode`` from the first byte; never through a planted link.

    ``target`` is a Fabric Connection or a paramiko SFTP client; ``data`` bytes or a binary file
    object (copied in chunks). ``mtime`` sets the file's modification time (code sync compares it).
    """
    sftp = sftp_of(target)
    tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.gpu-deploy.tmp")
    try:
        try:
            sftp.remove(tmp)  # a stale temp from an interrupted write (removes a link, never its target)
        except FileNotFoundError:
            pass
        with _create_exclusive(sftp, tmp, mode) as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                for chunk in iter(lambda: data.read(CHUNK), b""):
                    handle.write(chunk)
        if mtime is not None:
            sftp.utime(tmp, (mtime, mtime))
        sftp.posix_rename(tmp, path)
    except OSError as exc:
        raise HostError(f"Writing {path} over SFTP failed ({exc.strerror or exc}); check that its folder exists "
                        "and is writable.") from exc


def _create_exclusive(sftp: SFTPClient, path: str, mode: int) -> SFTPFile:
    """SFTP OPEN with CREATE|EXCL and the permissions in the same request (``sftp.open`` sends none)."""
    attrs = SFTPAttributes()
    attrs.st_mode = mode
    flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC | SFTP_FLAG_EXCL
    kind, msg = sftp._request(CMD_OPEN, sftp._adjust_cwd(path), flags, attrs)
    if kind != CMD_HANDLE:
        raise OSError(f"unexpected SFTP reply to OPEN {path}")
    handle = SFTPFile(sftp, msg.get_binary(), "wb")
    handle.set_pipelined(True)
    return handle


def program_source(name: str) -> str:
    """The text of a host-side program shipped in :mod:`deploy.remote` (``probe.sh``, ``rendezvous.py`` ...)."""
    return resources.files("deploy.remote").joinpath(name).read_text()


def python_program(python: str, name: str, *args: str) -> list[str]:
    """``python -c <deploy/remote/name> args``: a standard-library program run on the host without a copy.

    The program holds no secret, so it may travel as an argument (stdin through invoke is slow).
    """
    return [python, "-c", program_source(name), *args]
