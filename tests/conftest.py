"""Session fixtures shared by every tier: a real sshd, a real S3 server and the real Docker engine.

Under ``CI=true`` a missing server is a failure, not a skip: CI must exercise the real parts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.servers import SSHD, S3Server, SshServer
from tests.harness.warmup import FOLDER_KEY, Warmup, report

pytest_plugins = ("tests.harness.runpod", "tests.harness.managed", "tests.harness.s3proxy")
"""Fixture modules of the harness, for every tier: RunPod's stand-in control plane with real pods, a managed
run's operator folder, and S3 behind a proxy that drops or refuses conditional writes (test files name the
fixtures; none imports them)."""

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, what: str) -> None:
    """Skip when a real part is missing on a developer's machine; fail in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI (.ci/run installs it)")
    pytest.skip(f"{what} is not available here")


# ----------------------------------------------------------------------------- environment


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's own settings out of every test: no stray .env, no stray AWS keys."""
    from deploy.settings import ENV_FILE_VARIABLE, SETTING_KEYS

    for key in (*SETTING_KEYS, ENV_FILE_VARIABLE, "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.chdir(tmp_path)


# ----------------------------------------------------------------------------- SSH


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.1: the stand-in for a GPU host."""
    need(os.path.exists(SSHD) and shutil.which("ssh-keygen") is not None, "openssh-server (sshd)")
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def ssh_connection(ssh_server: SshServer):
    conn = ssh_server.connection()
    yield conn
    conn.close()


# ----------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server as a subprocess; code reaches it only over HTTP via AWS_ENDPOINT_URL."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        need(False, "moto[server]")
    server = S3Server(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> str:
    """One bucket for the whole session; tests isolate themselves with a prefix (``s3_env``)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings for this test's own corner of the bucket, also exported to the process environment."""
    env = s3_server.environ(s3_bucket, prefix=f"t-{uuid.uuid4().hex[:10]}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# ----------------------------------------------------------------------------- Docker


@pytest.fixture(scope="session")
def docker_client():
    """The local Docker engine through the docker SDK."""
    try:
        import docker

        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        need(False, f"the Docker engine ({exc.__class__.__name__})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny image FROM scratch with Debian's static busybox: for fast Docker tests."""
    from tests.harness.images import build_busybox_image

    return build_busybox_image(docker_client, tmp_path_factory.mktemp("busybox"))


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """The Python training base image (torch, lightning), built without a registry and cached."""
    from deploy.dev.baseimage import ensure_base_image

    return ensure_base_image(docker_client).tag


@pytest.fixture(scope="session")
def training_image(docker_client, base_image: str) -> Iterator[str]:
    """The project's training image (docker/Dockerfile) on the test base image, built once, offline."""
    from tests.harness.fab import REPO

    tag = f"gpu-deploy-test-train:session-{uuid.uuid4().hex[:8]}"
    docker_client.images.build(path=str(REPO), dockerfile="docker/Dockerfile", tag=tag, rm=True, forcerm=True,
                               buildargs={"BASE_IMAGE": base_image}, network_mode="none")
    yield tag
    try:
        docker_client.images.remove(tag, force=True)
    except Exception:  # noqa: BLE001 - a test may have removed it already
        pass


# ----------------------------------------------------------------------------- a second engine: Docker 26


@pytest.fixture(scope="session")
def docker26(tmp_path_factory: pytest.TempPathFactory):
    """Docker 26 with Compose v2 (Debian trixie's, unpacked by scripts/bootstrap) beside the system's engine, with
    its own socket, data root and bridge; the test processes on this machine share it, the last one stops it."""
    from tests.harness.engines import DOCKER26

    need(DOCKER26.unpacked(), f"Docker 26 in {DOCKER26.root} (scripts/bootstrap fetches it)")
    need(os.geteuid() == 0 and shutil.which("ip") is not None, "root and iproute2, for a second Docker engine")
    engine = DOCKER26.acquire(tmp_path_factory.mktemp("docker26") / "dockerd.log")
    yield engine
    engine.release()


@pytest.fixture(scope="session")
def docker26_client(docker26):
    """The docker SDK's client for Docker 26, as an operator whose DOCKER_HOST names it gets from docker.from_env()."""
    client = docker26.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def engine_host26(docker26, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A "GPU host" with Docker 26: an sshd whose sessions reach that engine (DOCKER_HOST) and find its docker,
    `docker compose` (the v2 plugin, through DOCKER_CONFIG) and a standalone `docker-compose` v2 first."""
    need(os.path.exists(SSHD) and shutil.which("ssh-keygen") is not None, "openssh-server (sshd)")
    server = SshServer(tmp_path_factory.mktemp("sshd26"), path=docker26.session_path(),
                       env=docker26.session_env()).start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------- scheduling


WARMUP = pytest.StashKey[Warmup]()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadfile`` with workers kept for the files that wait on clocks (tests/harness/schedule.py), and the
    base image built in the background when the engine lacks it (tests/harness/warmup.py)."""
    if config.getoption("dist") != "loadfile":
        return None
    from tests.harness.schedule import ClockBoundApart

    return ClockBoundApart(config, log, warmup=config.stash.get(WARMUP, None))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Controller: name the folder each worker writes the files that need the base image into."""
    if WARMUP not in node.config.stash:
        node.config.stash[WARMUP] = Warmup(tempfile.mkdtemp(prefix="gpu-deploy-image-files-"))
    node.workerinput[FOLDER_KEY] = node.config.stash[WARMUP].folder


@pytest.hookimpl(tryfirst=True)  # before xdist's worker sends its collection: the controller reads the file then
def pytest_collection_finish(session: pytest.Session) -> None:
    workerinput = getattr(session.config, "workerinput", {})
    if FOLDER_KEY in workerinput:
        report(workerinput[FOLDER_KEY], workerinput["workerid"], session.items)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    warmup = config.stash.get(WARMUP, None)
    if warmup is not None:
        warmup.join()
        if (line := warmup.summary()) is not None:
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    warmup = config.stash.get(WARMUP, None)
    if warmup is not None:
        warmup.join()  # a build under way ends before the session does
        shutil.rmtree(warmup.folder, ignore_errors=True)
