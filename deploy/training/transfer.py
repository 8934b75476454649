"""The uploads' network work in a helper process, so it never holds the training process's GIL.

Hashing a checkpoint, signing requests and driving boto3 is Python work; on the uploader's thread
it competes with the training loop for the interpreter lock. :class:`ProcessTransfer` hands each
job to a small worker process (``python -m deploy.training.transfer``, at a lower CPU priority)
over a pipe, one JSON line per job and per answer, and waits for the answer on the uploader's
thread. The worker builds its own :class:`~deploy.storage.Storage` from the same settings (it
inherits the environment and working directory; nothing secret is in its arguments), ignores
SIGINT and SIGTERM (its parent decides when to stop: it exits when the pipe closes, including when
the parent is killed), and is restarted if it dies.

Example::

    uploader = BackgroundUploader(ProcessTransfer())
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from deploy.errors import StorageError
from deploy.training.uploader import UploadJob


class ProcessTransfer:
    """A callable for :class:`~deploy.training.uploader.BackgroundUploader`: one job at a time."""

    def __init__(self, nice: int = 10, python: str = sys.executable) -> None:
        self.nice = nice
        self.python = python
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def _worker(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [self.python, "-m", "deploy.training.transfer", str(self.nice)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        return self._proc

    def __call__(self, job: UploadJob) -> dict[str, Any]:
        request = {"key": job.key, "path": job.path, "metadata": dict(job.metadata), "delete": job.delete}
        with self._lock:
            proc = self._worker()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except (BrokenPipeError, OSError) as exc:
                self._reap()
                raise StorageError(f"the upload helper process stopped ({exc}); it will be restarted") from exc
            if not line:
                self._reap()
                raise StorageError("the upload helper process stopped; it will be restarted")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise StorageError(answer.get("error") or "the upload failed")
        return answer

    def _reap(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self, timeout: float = 5.0) -> None:
        """Close the pipe; the worker finishes its job and exits (or is killed after ``timeout``).

        Deliberately without the lock: after a flush that ran out of time the uploader's thread may
        still be waiting for an answer, and closing must not wait for it.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


def serve(nice: int) -> None:
    """The worker: read one job per line from stdin, answer one line on stdout, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            pass
    from deploy.settings import load_settings
    from deploy.storage import Storage

    storage: Storage | None = None
    for line in sys.stdin:
        job = json.loads(line)
        try:
            storage = storage or Storage.from_settings(load_settings())
            if job["delete"]:
                storage.delete(job["key"])
                answer = {"ok": True, "key": job["key"]}
            else:
                result = storage.upload_file(job["path"], job["key"], metadata=job["metadata"])
                answer = {"ok": True, "key": result.key, "bytes": result.bytes, "sha256": result.sha256,
                          "seconds": result.seconds}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent, which retries
            answer = {"ok": False, "error": str(exc) or type(exc).__name__}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
