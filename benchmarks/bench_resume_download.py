"""Checkpoint download for resume (issue 22): the resume's own download against `aws s3 cp`, same S3 server.

Starts its own moto S3 server on loopback, writes a checkpoint-sized zip archive (``--mb``, default 850: a
Piper checkpoint) and uploads it as the training's uploader does (size and sha256 metadata). Then, in
turn (A B A B ...: a ratio taken pair by pair holds while the machine's speed drifts), each as a fresh
process:

A. what ``CHECKPOINT=s3`` runs on resume: :meth:`Storage.download_file` (s3transfer's parallel ranged
   GETs into a temp file beside the destination, then the size and sha256 check, then the rename) and
   the checkpoint check (:func:`looks_like_checkpoint`);
B. ``aws s3 cp s3://bucket/key DEST`` (no verification).

It prints each one's wall seconds (min, median, max), MB/s at the median, and the A/B ratios' median.

Usage (awscli is a benchmark-only tool, not a project dependency: it goes in its own virtualenv, so its
botocore pin cannot move the project's)::

    python3 -m venv /tmp/awscli && /tmp/awscli/bin/pip install awscli
    .venv/bin/python -m benchmarks.bench_resume_download --aws /tmp/awscli/bin/aws [--mb 850] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.servers import S3Server  # noqa: E402

BUCKET = "bench-resume"
KEY_NAME = "epoch=12-val_mel=0.412.ckpt"
MB = 1024 * 1024


def make_checkpoint(path: Path, mb: int) -> None:
    """A zip archive of ``mb`` MB of incompressible tensors, stored as torch.save stores them (no compression)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            for _ in range(mb):
                member.write(os.urandom(MB))


def fetch(key: str, dest: str) -> None:
    """A: the resume's download, as the training runs it (settings from the environment)."""
    from deploy.settings import load_settings
    from deploy.storage import Storage
    from deploy.training.journal import looks_like_checkpoint

    storage = Storage.from_settings(load_settings())
    storage.download_file(storage.key("checkpoints", key), dest)
    if not looks_like_checkpoint(dest):
        raise SystemExit(f"{dest} is not a checkpoint archive")


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def summary(name: str, seconds: list[float], mb: int) -> str:
    median = statistics.median(seconds)
    return (f"{name}: {min(seconds):.2f} / {median:.2f} / {max(seconds):.2f} s (min / median / max), "
            f"{mb / median:.0f} MB/s at the median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aws", default=shutil.which("aws"), help="the aws command (awscli)")
    parser.add_argument("--mb", type=int, default=850)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fetch", nargs=2, metavar=("KEY", "DEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fetch:
        fetch(*args.fetch)
        return
    if not args.aws:
        raise SystemExit("No aws command: install awscli in a virtualenv of its own and pass --aws (see the usage).")
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        work = Path(tmp)
        server = S3Server(work / "moto").start()
        try:
            server.client().create_bucket(Bucket=BUCKET)
            env = {**os.environ, **server.environ(BUCKET, prefix="run"), "AWS_ACCESS_KEY_ID": "bench",
                   "AWS_SECRET_ACCESS_KEY": "bench"}
            source = work / "source.ckpt"
            make_checkpoint(source, args.mb)
            from deploy.settings import load_settings
            from deploy.storage import Storage

            storage = Storage.from_settings(load_settings(environ=env))
            storage.upload_file(source, storage.key("checkpoints", KEY_NAME))
            source.unlink()
            size_mb = storage.head(storage.key("checkpoints", KEY_NAME)).size / MB
            ours = [sys.executable, "-m", "benchmarks.bench_resume_download", "--fetch", KEY_NAME,
                    str(work / "ours" / KEY_NAME)]
            aws = [args.aws, "s3", "cp", "--only-show-errors", "--endpoint-url", server.endpoint_url,
                   f"s3://{BUCKET}/run/checkpoints/{KEY_NAME}", str(work / "aws" / KEY_NAME)]
            env["PYTHONPATH"] = str(REPO)
            a, b = [], []
            for run in range(args.runs + 1):  # the first pair warms the server and the page cache
                for folder in ("ours", "aws"):
                    shutil.rmtree(work / folder, ignore_errors=True)
                    (work / folder).mkdir()
                ta, tb = timed(ours, env), timed(aws, env)
                if run:
                    a.append(ta)
                    b.append(tb)
            print(f"checkpoint {size_mb:.0f} MB, {args.runs} pairs, load average {os.getloadavg()[0]:.1f}")
            print(summary("A resume download (download_file + checks)", a, round(size_mb)))
            print(summary("B aws s3 cp", b, round(size_mb)))
            ratios = [y / x for x, y in zip(a, b)]
            print(f"throughput A / B (pair by pair, median): {statistics.median(ratios):.2f}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
