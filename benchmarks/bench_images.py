"""Benchmark: Docker images through S3 (issue 4), all figures in one run on this machine.

Against its own moto S3 server and the local Docker engine, on a ~1.2 GB single-layer image made
from the training base image (``deploy.dev.baseimage``; built first when absent). The base image is
shared with other work, so the benchmark exports it once into an image of its own
(``gpu-deploy-test-img/bench:v1``, a distinct layer) that it can delete and load freely.

Measures: ``docker save > /dev/null`` (the faster of two runs, at the start and the end); the old push pipeline (``docker save > file``, ``gzip``,
upload); a naive ``docker save | zstd -T2 | upload``; our first push (empty bucket) and its peak
RSS; ``docker load`` of a local uncompressed tar; the old pull pipeline (download, ``gunzip``,
``docker load``); our first pull (image absent); a push after a code-only change (a derived image
with one small new layer); and the pull of that change onto a host holding the previous version.

Run (as root, with the virtualenv):  ``.venv/bin/python -m benchmarks.bench_images``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from invoke import Context  # noqa: E402

from deploy import images  # noqa: E402
from deploy.settings import load_settings  # noqa: E402
from deploy.storage import Storage  # noqa: E402
from tests.harness.servers import S3Server  # noqa: E402

BENCH = "gpu-deploy-test-img/bench"
PUSH_CHILD = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from deploy import images
from deploy.settings import load_settings
from deploy.storage import Storage
storage = Storage.from_settings(load_settings())
started = time.monotonic()
result = images.push(images.docker_client(), storage, {image!r})
print(json.dumps({{"seconds": time.monotonic() - started, "sent": result.sent_bytes, "raw": result.raw_bytes,
                  "read": result.read_bytes, "uploaded": len(result.uploaded), "skipped": len(result.skipped)}}))
"""


def sh(cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=True, **kw)


def timed(cmd: str) -> float:
    started = time.monotonic()
    sh(cmd)
    return time.monotonic() - started


def rmi(client, *refs: str) -> None:
    for ref in refs:
        try:
            client.images.remove(ref, force=True)
        except Exception:  # noqa: BLE001 - not there
            pass


def make_bench_image(client, base: str) -> str:
    """A ~1.2 GB single-layer image of our own: the base's filesystem with a stamp, imported."""
    ref = f"{BENCH}:v1"
    try:
        client.images.get(ref)
        return ref
    except Exception:  # noqa: BLE001
        pass
    name = f"gpu-deploy-bench-{os.getpid()}"
    sh(f"docker create --name {name} --network none {base} true > /dev/null")
    try:
        sh(f"docker export {name} | docker import --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:"
           f"/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD [\"python3\"]' - {ref} > /dev/null")
    finally:
        sh(f"docker rm {name} > /dev/null")
    return ref


def push_in_child(image: str, env: dict[str, str]) -> tuple[dict, int]:
    """Our push in a child process, so its peak RSS is its own (os.wait4)."""
    proc = subprocess.Popen([sys.executable, "-c", PUSH_CHILD.format(root=str(ROOT), image=image)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"push failed: {out}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/var/tmp", help="Where the temporary tars go.")
    args = parser.parse_args()

    client = images.docker_client()
    from deploy.dev.baseimage import ensure_base_image

    base = ensure_base_image(client).tag
    image = make_bench_image(client, base)
    derived = f"{BENCH}:v2"
    size = int(client.api.inspect_image(image)["Size"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-images-", dir=args.workdir))
    server = S3Server(tmp / "moto").start()
    figures: dict[str, float] = {}
    notes: dict[str, object] = {"image": image, "image_bytes": size, "load_before": os.getloadavg()}
    try:
        server.client().create_bucket(Bucket="bench-images")
        env = server.environ("bench-images", prefix="bench")
        storage = Storage.from_settings(load_settings(overrides=env))
        tar, gz = tmp / "image.tar", tmp / "image.tar.gz"

        figures["docker save > /dev/null"] = timed(f"docker save {image} > /dev/null")

        started = time.monotonic()  # the old push: full temp copies, single-threaded gzip
        sh(f"docker save {image} > {tar}")
        sh(f"gzip -c {tar} > {gz}")
        storage.upload_file(gz, storage.key("docker-images", "old-pipeline.tar.gz"))
        figures["old push (save > file, gzip, upload)"] = time.monotonic() - started

        started = time.monotonic()
        with subprocess.Popen(f"docker save {image} | zstd -q -T2 -c", shell=True, stdout=subprocess.PIPE) as pipe:
            storage.upload_stream(pipe.stdout, storage.key("docker-images", "naive.tar.zst"))
        figures["naive push (save | zstd -T2 | upload)"] = time.monotonic() - started

        pushed, rss = push_in_child(image, env)
        figures["our first push"] = pushed["seconds"]
        notes["first push"] = pushed
        notes["push peak RSS MB"] = round(rss / 2**20)

        rmi(client, image)
        figures["docker load of a local tar"] = timed(f"docker load -i {tar} > /dev/null")
        rmi(client, image)
        started = time.monotonic()
        storage.download_file(storage.key("docker-images", "old-pipeline.tar.gz"), tmp / "dl.tar.gz")
        sh(f"gunzip -c {tmp / 'dl.tar.gz'} > {tmp / 'dl.tar'} && docker load -i {tmp / 'dl.tar'} > /dev/null")
        figures["old pull (download, gunzip, load)"] = time.monotonic() - started
        for path in (tmp / "dl.tar.gz", tmp / "dl.tar", gz):
            path.unlink()
        expected = client.images.get(image).id
        rmi(client, image)

        runner = Context()
        pulled = images.pull(runner, storage, image)
        figures["our first pull"] = pulled.seconds
        assert pulled.image_id == expected, (pulled.image_id, expected)
        notes["first pull downloaded"] = pulled.downloaded

        build = tmp / "derived"
        build.mkdir()
        (build / "train.py").write_bytes(os.urandom(64 * 1024))
        (build / "Dockerfile").write_text(f"FROM {image}\nCOPY train.py /workspace/train.py\n")
        client.images.build(path=str(build), tag=derived, rm=True)
        changed, _ = push_in_child(derived, env)
        figures["push after a code-only change"] = changed["seconds"]
        notes["code-change push"] = changed

        expected = client.images.get(derived).id
        rmi(client, derived)
        again = images.pull(runner, storage, derived)
        assert again.image_id == expected
        figures["pull after a code-only change"] = again.seconds
        notes["code-change pull downloaded"] = again.downloaded
        # The machine is shared: take the faster of two `docker save` runs as the floor.
        figures["docker save > /dev/null"] = min(figures["docker save > /dev/null"],
                                                 timed(f"docker save {image} > /dev/null"))
        notes["load_after"] = os.getloadavg()
    finally:
        server.stop()
        rmi(client, derived)
        shutil.rmtree(tmp, ignore_errors=True)

    report(figures, notes, size)


def report(figures: dict[str, float], notes: dict, size: int) -> None:
    print(f"image {notes['image']}: {size / 1e9:.2f} GB; load average before "
          f"{notes['load_before'][0]:.1f}, after {notes.get('load_after', (0,))[0]:.1f}")
    print("| step | seconds |\n| --- | ---: |")
    for name, seconds in figures.items():
        print(f"| {name} | {seconds:.1f} |")
    save, old_push = figures["docker save > /dev/null"], figures["old push (save > file, gzip, upload)"]
    load, first_pull = figures["docker load of a local tar"], figures["our first pull"]
    push = notes["first push"]
    changed = notes["code-change push"]
    checks = [
        ("first push / old push", figures["our first push"] / old_push, "<= 0.35"),
        ("first push / docker save", figures["our first push"] / save, "<= 1.3"),
        ("first pull / docker load", first_pull / load, "<= 1.15"),
        ("code-change push: bytes uploaded / image", changed["sent"] / size, "<= 0.02"),
        ("code-change push / docker save", figures["push after a code-only change"] / save, "<= 1.1"),
        ("code-change pull: bytes downloaded / image", notes["code-change pull downloaded"] / size, "<= 0.02"),
        ("code-change pull / first pull", figures["pull after a code-only change"] / first_pull, "<= 0.10"),
        ("push peak RSS (MB)", notes["push peak RSS MB"], "<= 300"),
    ]
    print("\n| check | measured | target |\n| --- | ---: | --- |")
    for name, value, target in checks:
        print(f"| {name} | {value:.3f} | {target} |" if value < 10 else f"| {name} | {value:.0f} | {target} |")
    print(f"\nfirst push: {push['sent'] / 2**20:.0f} MB sent for {push['raw'] / 2**20:.0f} MB of layers "
          f"(ratio {push['raw'] / max(push['sent'], 1):.2f}); code-change push: {changed['sent'] / 1024:.0f} KB sent, "
          f"{changed['skipped']} layer(s) skipped; code-change pull: "
          f"{notes['code-change pull downloaded'] / 1024:.0f} KB downloaded")


if __name__ == "__main__":
    main()
