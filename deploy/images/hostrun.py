"""Running :mod:`deploy.remote.hostload` on a host: the program and its job go over stdin.

Any runner with invoke's ``.run()`` works: an invoke ``Context`` for this machine, a Fabric
``Connection`` for a GPU host. The host needs ``python3`` only; it reads the script and the JSON
job from stdin, reports ``PROGRESS n`` lines on stderr and answers with one JSON line on stdout.

Example::

    facts = host_facts(connection, where="gpu-1")   # {"images": {...}, "tags": {...}, "zstd": True}
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from deploy.errors import ImageError
from deploy.images.ref import ImageProgress

HOSTLOAD = Path(__file__).resolve().parents[1] / "remote" / "hostload.py"

BOOTSTRAP = ("python3 -c \"import sys,json; d=json.loads(sys.stdin.read()); g={'__name__':'hostload'}; "
             "exec(compile(d['script'],'hostload.py','exec'),g); g['main'](d['job'])\"")


class _ChunkedInput:
    """An ``in_stream`` for invoke/Fabric that hands over 64 KiB per read (they ask for 1 byte)."""

    def __init__(self, data: bytes) -> None:
        self.buf = io.BytesIO(data)

    def read(self, _n: int = -1) -> bytes:
        return self.buf.read(64 * 1024)


class _ProgressSink:
    """``err_stream`` of the host script: turns its ``PROGRESS n`` lines into observer calls."""

    def __init__(self, progress: ImageProgress) -> None:
        self.progress = progress
        self.pending = ""
        self.other: list[str] = []

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.startswith("PROGRESS "):
                try:
                    self.progress.downloaded(int(line.split()[1]))
                except (ValueError, IndexError):
                    pass
            elif line.strip():
                self.other.append(line)
        return len(text)

    def flush(self) -> None:
        pass


def run_host_script(runner: Any, job: dict[str, Any], progress: ImageProgress | None = None,
                    where: str = "the host") -> dict[str, Any]:
    """Run :mod:`deploy.remote.hostload` through ``runner`` (Context or Connection), job and URLs on stdin."""
    payload = json.dumps({"script": HOSTLOAD.read_text(), "job": job}).encode()
    sink = _ProgressSink(progress or ImageProgress())
    try:
        result = runner.run(BOOTSTRAP, in_stream=_ChunkedInput(payload), hide="out", err_stream=sink,
                            warn=True, pty=False)
    except Exception as exc:  # noqa: BLE001 - SSH and process failures
        raise ImageError(f"Could not run the image loader on {where}: {exc}") from exc
    lines = [line for line in (result.stdout or "").splitlines() if line.startswith("{")]
    if not lines:
        detail = " ".join(sink.other)[-400:] or f"exit {result.exited}"
        raise ImageError(f"The image loader on {where} failed ({detail}); does it have python3?")
    answer = json.loads(lines[-1])
    if not answer.get("ok"):
        raise ImageError(f"On {where}: {answer.get('error')}.")
    return answer


def host_facts(runner: Any, where: str = "the host") -> dict[str, Any]:
    """The images and layer chains the host's engine has, and whether it has zstd."""
    return run_host_script(runner, {"mode": "facts"}, where=where)
