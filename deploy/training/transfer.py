"""The uploads' network work in a helper process, so it never holds the training process's GIL.

Hashing a checkpoint, signing requests and driving boto3 is Python work; on the uploader's thread
it competes with the training loop for the interpreter lock. :class:`ProcessTransfer` hands each
job to a small worker process (``python -m deploy.training.transfer``, at a lower CPU priority)
over a pipe, one JSON line per job and per answer, and waits for the answer on the uploader's
thread. The worker builds its own :class:`~deploy.storage.Storage` from the same settings (it
inherits the environment and working directory; nothing secret is in its arguments), ignores
SIGINT and SIGTERM (its parent decides when to stop: it exits when the pipe closes, including when
the parent is killed), and is restarted if it dies.

With ``RUN_ID`` and ``RUN_ATTEMPT`` in its environment (the entrypoint claimed the run's lease), the
worker's client checks the lease before every write under ``checkpoints/`` and ``logs/``
(:func:`deploy.training.lease.fence`); a refusal comes back as :class:`~deploy.training.lease.LeaseLost`,
which is never retried.

Open multipart uploads are aborted wherever this side can see them: the worker aborts the ones left
for a key whose upload failed (at once, and again once a later try of that key succeeded, in case
the server was unreachable the first time), and :func:`abort_open_uploads` is what the callback
calls for the upload in flight when it had to stop the worker at a stop deadline.

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
from collections.abc import Iterable
from typing import Any

from deploy.errors import StorageError
from deploy.training.lease import Lease, LeaseLost, fence_from_environment
from deploy.training.uploader import UploadJob


def abort_open_uploads(storage: Any, keys: Iterable[str]) -> int:
    """Abort every unfinished multipart upload for exactly these keys; returns how many.

    One listing per key (a prefix equal to the key; other keys that merely start with it are left).
    """
    aborted = 0
    for key in dict.fromkeys(keys):
        for upload in storage.multipart_uploads(key):
            if upload["key"] == key:
                storage.abort_multipart(key, upload["upload_id"])
                aborted += 1
    return aborted


def abort_open_uploads_within(storage: Any, keys: Iterable[str], timeout: float) -> int | None:
    """:func:`abort_open_uploads` for at most ``timeout`` seconds (S3 may be what stalled the upload).

    Returns the count, or None when it failed or ran out of time (the operator's abort task cleans
    up later).
    """
    keys = list(keys)
    outcome: list[int] = []

    def work() -> None:
        try:
            outcome.append(abort_open_uploads(storage, keys))
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass

    thread = threading.Thread(target=work, name="s3-abort-uploads", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    return outcome[0] if outcome else None


class ProcessTransfer:
    """A callable for :class:`~deploy.training.uploader.BackgroundUploader`: one job at a time."""

    def __init__(self, nice: int = 10, python: str = sys.executable) -> None:
        self.nice = nice
        self.python = python
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _worker(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [self.python, "-m", "deploy.training.transfer", str(self.nice)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        return self._proc

    def __call__(self, job: UploadJob) -> dict[str, Any]:
        request = {"key": job.key, "path": job.path, "metadata": dict(job.metadata), "delete": job.delete}
        with self._lock:
            if self._closed:
                raise StorageError("the upload helper process was stopped")
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
            if isinstance(answer.get("lease"), dict):  # a newer attempt holds the run: never retried
                raise LeaseLost(Lease.from_dict(answer["lease"]), int(answer.get("attempt") or 0), job.key,
                                answer.get("error") or "")
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
        still be waiting for an answer, and closing must not wait for it. No worker starts after this.
        """
        self._closed = True
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
    failed_keys: set[str] = set()  # keys whose upload failed: a multipart upload may be left open
    for line in sys.stdin:
        job = json.loads(line)
        try:
            if storage is None:
                storage = Storage.from_settings(load_settings())
                fence_from_environment(storage)  # RUN_ID and RUN_ATTEMPT: every write checks the lease
            answer = _serve_one(storage, job)
            if job["key"] in failed_keys:
                failed_keys.discard(job["key"])
                _abort_quietly(storage, job["key"])  # the first abort may have found S3 unreachable
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent, which retries
            answer = {"ok": False, "error": str(exc) or type(exc).__name__}
            if isinstance(exc, LeaseLost):
                # The parent must not retry this one. s3transfer aborted the upload it had open; an
                # abort by key here could end the newer attempt's upload of the same key.
                answer.update(lease=exc.lease.to_dict(), attempt=exc.attempt)
            elif storage is not None and not job["delete"]:
                failed_keys.add(job["key"])
                _abort_quietly(storage, job["key"])
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def _serve_one(storage: Any, job: dict[str, Any]) -> dict[str, Any]:
    if job["delete"]:
        storage.delete(job["key"])
        return {"ok": True, "key": job["key"]}
    result = storage.upload_file(job["path"], job["key"], metadata=job["metadata"])
    return {"ok": True, "key": result.key, "bytes": result.bytes, "sha256": result.sha256, "seconds": result.seconds}


def _abort_quietly(storage: Any, key: str) -> None:
    try:
        abort_open_uploads(storage, [key])
    except Exception:  # noqa: BLE001 - the retry goes on either way; the next success tries again
        pass


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
