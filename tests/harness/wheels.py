"""A package index and RunPod-like pods for the wheel store's tests and benchmark (deploy.runtimes.native.wheels).

:class:`Index` serves a PEP 503 folder over HTTP (wheels built here, or an existing ``simple/`` tree such as
a local mirror) and remembers every path and byte it served; :func:`start_pod` makes an sshd whose sessions
see only that index, with no pip config of this machine and a pip cache of their own; :class:`Deployer`
deploys a project to a pod by the flow (probe -> gather -> plan -> execute), training not started.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from deploy.flow.rollout import Rollout, execute, prepare
from deploy.hosts import HostOptions, HostSpec
from deploy.hosts.probe import probe
from deploy.hosts.ssh import connect
from deploy.runtimes.native import NativeRuntime
from deploy.runtimes.native.wheelstore import BucketWheels
from deploy.settings import load_settings
from deploy.storage import Storage
from tests.harness.pod import pod_bin
from tests.harness.servers import SshServer
from tests.harness.waiting import write_dotenv


class Index:
    """A PEP 503 index (``root/simple/<name>/``) over HTTP, remembering every path asked for and the bytes sent."""

    def __init__(self, root: Path) -> None:
        self.root, self.requests, self.sent = root, [], 0
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def copyfile(self, source, outputfile) -> None:
                data = source.read()
                index.sent += len(data)
                outputfile.write(data)

            def log_message(self, fmt: str, *args) -> None:
                index.requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"

    def add(self, name: str, version: str, work: Path) -> Path:
        """Build ``name`` (a one-module pyproject) with pip wheel and serve it at simple/<name>/."""
        src = work / f"{name}-src"
        (src / name).mkdir(parents=True)
        (src / name / "__init__.py").write_text(f"VERSION = {version!r}\n")
        (src / "pyproject.toml").write_text(
            f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
            f'[project]\nname = "{name}"\nversion = "{version}"\n')
        folder = self.root / "simple" / name
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(folder), str(src)], check=True, capture_output=True)
        [wheel] = folder.glob("*.whl")
        return wheel

    def stop(self) -> None:
        self.server.shutdown()


def start_pod(work: Path, index: Index) -> SshServer:
    """A RunPod-like host (no docker) whose pip sees only ``index``, with its own empty pip cache."""
    work.mkdir()
    env = {"PIP_INDEX_URL": index.url, "PIP_CONFIG_FILE": os.devnull, "PIP_CACHE_DIR": str(work / "pip-cache"),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return SshServer(work / "sshd", path=f"{pod_bin(work / 'bin')}:/usr/sbin:/sbin", env=env).start()


class Deployer:
    """An operator's project and .env, deploying to one pod by the flow, training not started."""

    def __init__(self, project: Path, values: dict[str, str]) -> None:
        self.project, self.values = project, values

    def deploy(self, pod: SshServer, remote_dir: str, dry_run: bool = False,
               **env: str) -> tuple[list[str], list[str], dict[str, float]]:
        """Deploy; (the plan's lines, the steps' log lines, seconds each step took)."""
        write_dotenv(self.project / ".env", {**self.values, "REMOTE_DIR": remote_dir, **env})
        settings = load_settings(env_file=self.project / ".env", environ={})
        storage = Storage.from_settings(settings)
        spec = HostSpec("127.0.0.1", pod.port, pod.user)
        options = HostOptions(key_file=str(pod.client_key), known_hosts=str(pod.known_hosts))
        rollout = Rollout(image_ref="", image_id="", image_bytes=0, remote_dir=remote_dir, runtime="native",
                          native_python=sys.executable, package_index=settings.package_index)
        logs: list[str] = []
        starts: list[tuple[str, float]] = []  # each step's name and when the flow began it

        def log(line: str) -> None:
            logs.append(line)
            host, _, rest = line.partition(": ")
            if host == spec.host:
                starts.append((rest.split(": ", 1)[0], time.monotonic()))

        with connect(spec, options) as conn:
            facts = probe(conn, remote_dir)
            deploy = prepare(conn, spec, rollout, settings, NativeRuntime(options, self.project, BucketWheels(storage)), facts,
                             storage=storage)
            plan = deploy.describe()
            if not dry_run:
                execute(conn, deploy, storage, log=log, start=False)
        starts.append(("", time.monotonic()))
        seconds = {name: starts[i + 1][1] - began for i, (name, began) in enumerate(starts[:-1])}
        return plan, logs, seconds
