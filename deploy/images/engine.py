"""The local Docker engine as a push sees it: the client, ``image inspect``, the ``docker save`` stream.

Every engine failure becomes one :class:`~deploy.errors.ImageError` sentence that says what to
check (the engine, the image name with the closest local tags).
"""

from __future__ import annotations

import difflib
import subprocess
from pathlib import Path
from typing import Any

from deploy.errors import ImageError
from deploy.images.archive import IterReader
from deploy.images.ref import ImageProgress, ImageRef
from deploy.reach import causes, why
from deploy.storage.bucket import MB

SAVE_CHUNK = MB
PREFETCH_CHUNKS = 16


def docker_client(timeout: int = 900) -> Any:
    """The local engine, or an :class:`ImageError` saying it cannot be reached and how to check."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - the SDK raises several kinds for "not reachable"
        raise ImageError(
            f"Cannot reach the Docker engine: {_engine_words(exc)}; check that it runs with `docker info` (and "
            "DOCKER_HOST if you use a remote engine).") from exc


def _engine_words(exc: BaseException) -> str:
    """What a failed talk with the engine means, without the SDK's class names."""
    if any(isinstance(e, (FileNotFoundError, ConnectionRefusedError)) for e in causes(exc)):
        return "nothing answers at its socket"
    if any(isinstance(e, PermissionError) for e in causes(exc)):
        return "this user may not use its socket (the docker group?)"
    return why(exc)


def inspect_local(client: Any, ref: ImageRef) -> dict[str, Any]:
    """``docker image inspect`` of ``ref``; a missing image names the closest local tags."""
    import docker.errors

    try:
        return client.api.inspect_image(str(ref))
    except docker.errors.ImageNotFound:
        raise ImageError(f"The image {ref} is not in the local Docker engine{_closest_tags(client, ref)}") from None
    except docker.errors.APIError as exc:
        raise ImageError(f"The Docker engine refused to inspect {ref}: {exc.explanation or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - connection errors
        raise ImageError(f"Cannot reach the Docker engine: {_engine_words(exc)}; check it with `docker info`.") \
            from exc


def _closest_tags(client: Any, ref: ImageRef) -> str:
    tags = sorted({t for image in client.images.list() for t in image.tags})
    close = difflib.get_close_matches(str(ref), tags, n=3, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    if tags:
        return f"; local images: {', '.join(tags[:5])}{' ...' if len(tags) > 5 else ''}."
    return "; the engine has no tagged images."


def save_stream(client: Any, ref: ImageRef, progress: ImageProgress) -> IterReader:
    """``docker save`` of ``ref`` as a file object, prefetched so the engine keeps exporting."""
    try:
        chunks = client.api.get_image(str(ref), chunk_size=SAVE_CHUNK)
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"docker save {ref} failed: {exc}") from exc
    return IterReader(chunks, prefetch=PREFETCH_CHUNKS, on_read=progress.read)


def git_commit(cwd: str | Path = ".") -> str | None:
    """The working tree's commit (``+dirty`` when it has changes), or None outside a git tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip()[:12] + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
