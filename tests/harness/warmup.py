"""The base image, built in the background while the test workers run the files that do not need it.

On a machine that has never built it (a clean CI machine, a newcomer's first ``scripts/test``) the base image takes
60-80 s alone (mmdebstrap or debootstrap, pip, ``docker import``). Each worker used to start with a long end-to-end
file that needs it and wait on the machine lock meanwhile, so the whole suite stood still that long. Now the
controller starts the build as soon as the workers have collected, and the scheduler (``tests/harness/schedule.py``)
gives the workers not kept for clock-bound files the files that need no image until it is done (the kept ones wait
for it with their managed-run files). Where the engine has the image already, nothing changes.

A file needs the image when it is end-to-end, or when one of its tests uses the ``base_image`` fixture, directly or
through another fixture (``pod_image``): each worker writes those files into a folder the controller names.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FIXTURE = "base_image"
FOLDER_KEY = "gpu_deploy_image_files"
"""The worker input that names the folder each worker writes its image files into."""
E2E = "tests/e2e/"
BUILD_NICE = -10
"""The build's priority: on two cores beside four workers' tests it took 4.5 min at the default, where alone 80 s."""


def image_files(items: Iterable[Any]) -> set[str]:
    """The test files among ``items`` (collected tests) that use the base image's fixture."""
    return {item.nodeid.split("::")[0] for item in items if FIXTURE in getattr(item, "fixturenames", ())}


def report(folder: str, worker: str, items: Iterable[Any]) -> None:
    """A worker's part: which of the files it collected need the image."""
    Path(folder, f"{worker}.json").write_text(json.dumps(sorted(image_files(items))))


def reported(folder: str) -> set[str]:
    """What the workers wrote (each writes before it tells the controller its collection)."""
    files: set[str] = set()
    for path in Path(folder).glob("*.json"):
        files.update(json.loads(path.read_text()))
    return files


class Warmup:
    """Builds the base image in a thread of the controller when the engine lacks it and a collected file needs it."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.files: frozenset[str] = frozenset()
        self.error: Exception | None = None
        self.steps: list[tuple[float, str]] = []  # (when, the build's line) for the session's summary
        self._thread: threading.Thread | None = None

    def begin(self, collected: Iterable[str]) -> None:
        """Called once the workers have collected ``collected`` (test files), before any test is sent."""
        collected = set(collected)
        files = (reported(self.folder) | {scope for scope in collected if scope.startswith(E2E)}) & collected
        if not files:
            return
        client = _engine()
        if client is None:
            return
        from deploy.dev.baseimage import BaseImageRecipe, find_image

        if find_image(client, BaseImageRecipe()) is not None:
            client.close()
            return
        self.files = frozenset(files)
        # Not a daemon: an interrupted build ends with its commands (they get the terminal's Ctrl-C too) and cleans
        # its folder; a session that ends first (-x) waits for it, so the next run finds the image whole.
        self._thread = threading.Thread(target=self._build, args=(client,), name="base-image")
        self._thread.start()

    def waiting(self) -> frozenset[str]:
        """The files that should not start yet: those that need the image, while it is being built."""
        return self.files if self._thread is not None and self._thread.is_alive() else frozenset()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def _build(self, client: Any) -> None:
        from deploy.dev.baseimage import ensure_base_image

        try:  # ahead of the workers' tests (the commands it starts inherit this thread's nice), for they wait on it
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BUILD_NICE)
        except OSError:  # not root: the build needs root anyway and will say so
            pass
        try:
            self.steps.append((time.monotonic(), "base image: started"))
            ensure_base_image(client, log=lambda line: self.steps.append((time.monotonic(), line)))
            self.steps.append((time.monotonic(), "base image: done"))
        except Exception as exc:  # noqa: BLE001 - the workers' fixture builds it again and says why
            self.error = exc
        finally:
            client.close()

    def summary(self) -> str | None:
        """One line on how long the background build took, by step, or None when there was none."""
        if len(self.steps) < 2:
            return None
        if self.error is not None:
            return f"base image: the background build failed ({self.error.__class__.__name__}); the tests built it"
        step = [line.split(": ", 1)[-1].split()[0] for _, line in self.steps]  # debootstrap, pip, docker
        spans = ", ".join(f"{name} {later[0] - when:.0f} s"
                          for (when, _), later, name in zip(self.steps[1:-1], self.steps[2:], step[1:-1]))
        return f"base image: built in the background in {self.steps[-1][0] - self.steps[0][0]:.0f} s ({spans})"


def _engine() -> Any:
    """The local Docker engine, or None when there is none (the tests that need it skip, or fail in CI)."""
    from deploy.errors import ImageError
    from deploy.images.engine import docker_client

    try:
        return docker_client()
    except ImageError:
        return None
