"""Images through S3 against the real Docker engine, moto's S3 server and a real sshd.

Every image here is a small variant of the busybox test image (one or two extra small layers) with
a unique gpu-deploy-test-img/... tag, removed at the end.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from invoke import Context

from deploy import images
from deploy.errors import ImageError
from deploy.images.store import ImageStore
from deploy.storage import Storage

pytestmark = pytest.mark.docker


@pytest.fixture
def build(docker_client, busybox_image, tmp_path):
    """Build busybox variants: ``build("one", "two")`` adds one small layer per line."""
    from tests.harness.images import build_busybox_image

    made: list[str] = []
    name = f"gpu-deploy-test-img/{uuid.uuid4().hex[:10]}"

    def make(*stamps: str, tag: str = "v1", big: int = 0) -> str:
        workdir = tmp_path / f"ctx-{len(made)}"
        workdir.mkdir()
        extra = ""
        if big:
            (workdir / "big.bin").write_bytes(os.urandom(big))
            extra += "COPY big.bin /big.bin\n"
        for stamp in stamps:
            extra += f'RUN ["/bin/busybox", "sh", "-c", "echo {stamp} >> /stamps"]\n'
        ref = f"{name}:{tag}"
        build_busybox_image(docker_client, workdir, tag=ref, extra=extra)
        made.append(ref)
        return ref

    yield make
    for ref in made:
        try:
            image_id = docker_client.images.get(ref).id
            docker_client.images.remove(ref, force=True)
            docker_client.images.remove(image_id, force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def image_id(client, ref: str) -> str | None:
    try:
        return client.images.get(ref).id
    except Exception:  # noqa: BLE001
        return None


def remove(client, ref: str) -> None:
    client.images.remove(ref, force=True)
    assert image_id(client, ref) is None


def multipart_uploads(storage: Storage) -> list:
    return storage.multipart_uploads(storage.key("docker-images") + "/")


@pytest.mark.parametrize("fmt,codec", [("layers", "zstd"), ("layers", "gzip"), ("layers", "none"),
                                       ("archive", "zstd"), ("archive", "gzip"), ("archive", "none")])
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_round_trip(where, fmt, codec, docker_client, build, storage, ssh_server) -> None:
    ref = build(f"{where}-{fmt}-{codec}-{uuid.uuid4().hex}")
    expected = image_id(docker_client, ref)
    pushed = images.push(docker_client, storage, ref, codec, fmt)
    assert pushed.sent_bytes > 0 and not pushed.plan.noop
    assert images.plan_push(docker_client, storage, ref, codec, fmt).noop  # skip when present: push

    remove(docker_client, ref)
    runner = Context() if where == "local" else ssh_server.connection()
    try:
        pulled = images.pull(runner, storage, ref, where=where)
        assert pulled.image_id == expected == image_id(docker_client, ref)
        again = images.plan_pull(runner, storage, ref, where=where)  # skip when present: pull
        assert again.action == "noop"
    finally:
        if where == "ssh":
            runner.close()
    listed = {(r.name, r.tag, r.format, r.codec) for r in images.list_images(storage)}
    name, tag = ref.rsplit(":", 1)
    assert (name, tag, fmt, codec) in listed


def test_a_code_change_moves_only_the_new_layer_both_ways(docker_client, build, storage) -> None:
    stamp = uuid.uuid4().hex
    v1 = build(stamp, tag="v1")
    first = images.push(docker_client, storage, v1)
    v2 = build(stamp, "code change", tag="v2")
    new_layer = docker_client.api.inspect_image(v2)["RootFS"]["Layers"][-1]

    plan = images.plan_push(docker_client, storage, v2)
    assert plan.uploads == [new_layer]
    second = images.push(docker_client, storage, v2, plan=plan)
    stored = storage.head(storage.key("docker-images", "layers", new_layer[7:] + ".tar.zst"))
    assert second.uploaded == [new_layer]
    assert second.sent_bytes == stored.size < first.sent_bytes / 10
    assert len(second.skipped) == 3

    # The host holds v1: pulling v2 downloads exactly the new layer's object.
    expected = image_id(docker_client, v2)
    remove(docker_client, v2)
    pulled = images.pull(Context(), storage, v2)
    assert pulled.downloaded == stored.size
    assert pulled.image_id == expected


def test_interrupted_upload_leaves_no_multipart_upload_and_next_push_completes(
        docker_client, build, storage) -> None:
    ref = build(uuid.uuid4().hex, big=40 * 1024 * 1024)
    big_layer = docker_client.api.inspect_image(ref)["RootFS"]["Layers"][2]

    interrupted = threading.Event()

    def ctrl_c(signum: int, frame: object) -> None:  # Python's own SIGINT handler, noting that it ran
        interrupted.set()
        raise KeyboardInterrupt

    class CtrlC(images.ImageProgress):
        """Presses Ctrl-C (SIGINT reaches the main thread) once 24 MB of the big layer went by, and holds the
        thread that sent them until the main thread took it: the rest of the layer cannot finish first."""

        raw_bytes = 0

        def raw(self, n: int) -> None:
            self.raw_bytes += n
            if self.raw_bytes > 24 * 1024 * 1024 and not getattr(self, "pressed", False):
                self.pressed = True
                os.kill(os.getpid(), signal.SIGINT)
                interrupted.wait(60)

    previous = signal.signal(signal.SIGINT, ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            images.push(docker_client, storage, ref, "none", progress=CtrlC())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert multipart_uploads(storage) == []
    assert storage.head(storage.key("docker-images", "layers", big_layer[7:] + ".tar")) is None
    store = ImageStore(storage)
    complete = [d for d in docker_client.api.inspect_image(ref)["RootFS"]["Layers"]
                if store.find_layer(d, "none") is not None]

    again = images.push(docker_client, storage, ref, "none")
    assert big_layer in again.uploaded
    assert set(complete) <= set(again.skipped)          # layers finished before Ctrl-C are reused
    assert images.plan_push(docker_client, storage, ref, "none").noop
    assert multipart_uploads(storage) == []


def test_a_killed_push_leaves_no_multipart_upload_once_the_rerun_completes_the_layer(
        docker_client, build, storage) -> None:
    # kill -9 runs no cleanup: the killed push's multipart upload stays open on the layer's key.
    ref = build(uuid.uuid4().hex)
    layer = docker_client.api.inspect_image(ref)["RootFS"]["Layers"][-1]
    key = ImageStore(storage).layer_key(layer, "none")
    storage.client.create_multipart_upload(Bucket=storage.bucket, Key=key)
    assert [u["key"] for u in multipart_uploads(storage)] == [key]

    rerun = images.push(docker_client, storage, ref, "none")
    assert layer in rerun.uploaded
    assert multipart_uploads(storage) == []


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_damaged_layer_is_refused_with_its_key_and_checksums(damage, docker_client, build, storage) -> None:
    ref = build(uuid.uuid4().hex)
    images.push(docker_client, storage, ref)
    top = docker_client.api.inspect_image(ref)["RootFS"]["Layers"][-1]
    key = storage.key("docker-images", "layers", top[7:] + ".tar.zst")
    body = bytearray(storage.open_stream(key).read())
    if damage == "corrupt":
        body[len(body) // 2] ^= 0xFF
    else:
        body = body[: len(body) // 2]
    storage.client.put_object(Bucket=storage.bucket, Key=key, Body=bytes(body))
    remove(docker_client, ref)

    with pytest.raises(ImageError) as caught:
        images.pull(Context(), storage, ref)
    message = str(caught.value)
    assert key in message
    if damage == "corrupt":
        assert "corrupt" in message and message.count("sha256") >= 1
        manifest_sha = ImageStore(storage).read_manifest(*ref.rsplit(":", 1)).layers[-1].sha256
        assert manifest_sha in message
    else:
        assert "truncated" in message
    assert image_id(docker_client, ref) is None


def test_old_style_gzip_archive_uploaded_by_hand_loads(docker_client, build, storage) -> None:
    ref = build(uuid.uuid4().hex)
    expected = image_id(docker_client, ref)
    saved = subprocess.run(["docker", "save", ref], check=True, capture_output=True).stdout
    name, tag = ref.rsplit(":", 1)
    key = storage.key("docker-images", f"{name.replace('/', '_')}-{tag}.tar.gz")
    storage.client.put_object(Bucket=storage.bucket, Key=key, Body=gzip.compress(saved))
    remove(docker_client, ref)

    plan = images.plan_pull(Context(), storage, ref)
    assert (plan.format, plan.key, plan.image_id) == ("archive", key, None)
    pulled = images.pull(Context(), storage, ref, plan=plan)
    assert pulled.image_id == expected == image_id(docker_client, ref)


def test_missing_image_and_unreachable_engine_say_what_to_check(docker_client, busybox_image, storage,
                                                                monkeypatch) -> None:
    with pytest.raises(ImageError, match="not in the local Docker engine; did you mean gpu-deploy-test/busybox:latest"):
        images.plan_push(docker_client, storage, "gpu-deploy-test/busybx:latest")
    with pytest.raises(ImageError, match="bucket has no image"):
        images.plan_pull(Context(), storage, "gpu-deploy-test-img/none:v1", facts={"images": {}, "tags": {}})
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ImageError, match="Cannot reach the Docker engine.*docker info"):
        images.docker_client()


def test_delete_gc_and_stale_uploads(docker_client, build, storage) -> None:
    from datetime import datetime, timedelta, timezone

    ref = build(uuid.uuid4().hex)
    images.push(docker_client, storage, ref)
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    assert images.plan_gc(storage, now=later).delete == []

    plan = images.plan_delete(storage, ref)
    assert len(plan.keys) == 1
    images.execute_deletes(storage, plan.keys)
    assert images.list_images(storage) == []
    assert images.plan_gc(storage).delete == []          # layers younger than the grace period stay
    gc = images.plan_gc(storage, now=later)
    assert len(gc.delete) == 6                          # 3 layers and their records
    images.execute_deletes(storage, [key for key, _ in gc.delete])
    assert list(storage.list(storage.key("docker-images") + "/")) == []

    storage.client.create_multipart_upload(Bucket=storage.bucket, Key=storage.key("docker-images", "layers", "x"))
    stale = images.stale_uploads(storage, timedelta(0))
    assert [u.key for u in stale] == [storage.key("docker-images", "layers", "x")]
    images.abort_uploads(storage, stale)
    assert multipart_uploads(storage) == []


def test_fab_tasks_work_by_their_top_level_names(docker_client, busybox_image, s3_env) -> None:
    fab = [sys.executable, "-m", "fabric"]
    cwd = Path(__file__).resolve().parents[2]
    env = {**os.environ, **s3_env}
    push = subprocess.run([*fab, "image-to-s3", f"--image={busybox_image}", "--codec=gzip"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert push.returncode == 0, push.stderr
    assert "uploaded 2 layer(s)" in push.stdout
    again = subprocess.run([*fab, "image-to-s3", f"--image={busybox_image}", "--codec=gzip"], cwd=cwd, env=env,
                           capture_output=True, text=True)
    assert "nothing to do" in again.stdout
    listed = subprocess.run([*fab, "images"], cwd=cwd, env=env, capture_output=True, text=True)
    assert busybox_image.split(":")[0] in listed.stdout and "gzip" in listed.stdout
    pull = subprocess.run([*fab, "image-from-s3", f"--image={busybox_image}", "--dry-run"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert "nothing to do" in pull.stdout, pull.stderr
    missing = subprocess.run([*fab, "image-to-s3", "--image=gpu-deploy-test/busybx:latest"], cwd=cwd, env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 1
    assert "did you mean gpu-deploy-test/busybox:latest" in missing.stderr
    assert "Traceback" not in missing.stderr
