"""Directory sync benchmark (issue 3): our `fab s3.*` tasks against `aws s3 sync`, same S3 server.

Creates about 1 GB in 1,000 files of mixed sizes, starts its own moto S3 server on loopback, then
times, each as the operator would run it (a fresh process):

1. upload:   `aws s3 sync DIR s3://bucket/aws/`       vs `fab s3.upload-dataset`
2. download: `aws s3 sync s3://bucket/aws/ DIR2`      vs `fab s3.download-dataset`
3. re-sync with nothing changed, both directions, both tools.

Usage (awscli is a benchmark-only tool, not a project dependency)::

    .venv/bin/pip install awscli
    .venv/bin/python -m benchmarks.bench_sync [--files 1000] [--total-mb 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.servers import S3Server  # noqa: E402

BIN = Path(sys.executable).parent
BUCKET = "bench-sync"
MB = 1024 * 1024


def make_tree(root: Path, files: int, total_mb: int, seed: int = 3) -> int:
    """``files`` files, ~80% small (4-256 KB), ~18% medium (1-8 MB), ~2% large (16-40 MB), scaled to total."""
    rng = random.Random(seed)
    sizes = []
    for i in range(files):
        bucket = i % 50
        if bucket == 0:
            sizes.append(rng.uniform(16, 40) * MB)
        elif bucket < 10:
            sizes.append(rng.uniform(1, 8) * MB)
        else:
            sizes.append(2 ** rng.uniform(12, 18))
    scale = total_mb * MB / sum(sizes)
    total = 0
    for i, size in enumerate(sizes):
        path = root / f"part{i % 10}" / f"file_{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(max(1, int(size * scale)))
        path.write_bytes(data)
        total += len(data)
    old = time.time() - 3600  # as a dataset on disk is: not written in the last second
    for path in root.rglob("*.bin"):
        os.utime(path, (old, old))
    return total


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed, result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--total-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the table shows medians")
    args = parser.parse_args()
    aws = shutil.which("aws", path=str(BIN)) or shutil.which("aws")
    if aws is None:
        raise SystemExit("aws not found: .venv/bin/pip install awscli")

    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        source = work / "source"
        total = make_tree(source, args.files, args.total_mb)
        print(f"{args.files} files, {total / MB:.0f} MB in {source}")
        server = S3Server(work / "moto").start()
        try:
            server.client().create_bucket(Bucket=BUCKET)
            env = {**os.environ, **server.environ(BUCKET),
                   "GPU_DEPLOY_CACHE_DIR": str(work / "cache"), "AWS_SHARED_CREDENTIALS_FILE": str(work / "none"),
                   "AWS_CONFIG_FILE": str(work / "none")}
            fab = [str(BIN / "fab"), "--search-root", str(REPO)]
            aws_sync = [aws, "s3", "sync", "--only-show-errors", "--endpoint-url", server.endpoint_url]
            results: dict[str, dict[str, list[float]]] = {}
            lines: dict[str, str] = {}

            def run(label: str, tool: str, cmd: list[str], prefix: str) -> None:
                seconds, line = timed(cmd, {**env, "S3_PREFIX": prefix}, work)
                results.setdefault(label, {}).setdefault(tool, []).append(seconds)
                if tool == "ours":
                    lines[label] = line
                print(f"  {label:<26} {tool:<5} {seconds:6.2f} s  {line if tool == 'ours' else ''}", flush=True)

            def ours_up(rep: int) -> list[str]:
                return fab + ["s3.upload-dataset", "--path", str(source), "--name", "bench"]

            def ours_down(rep: int) -> list[str]:
                return fab + ["s3.download-dataset", "--name", "bench", "--dest", str(work / f"ours-{rep}")]

            def aws_up(rep: int) -> list[str]:
                return aws_sync + [str(source), f"s3://{BUCKET}/aws-{rep}/"]

            def aws_down(rep: int) -> list[str]:
                return aws_sync + [f"s3://{BUCKET}/aws-{rep}/", str(work / f"aws-{rep}")]

            for rep in range(args.repeat):
                # Alternate who goes first: the second run of a pair finds a warmer page cache.
                order = [("ours", ours_up, ours_down), ("aws", aws_up, aws_down)]
                if rep % 2:
                    order.reverse()
                print(f"round {rep + 1} of {args.repeat}")
                for tool, up, _ in order:
                    run("upload", tool, up(rep), f"ours-{rep}")
                for tool, _, down in order:
                    run("download", tool, down(rep), f"ours-{rep}")
                for tool, up, down in order:
                    run("upload, nothing changed", tool, up(rep), f"ours-{rep}")
                    run("download, nothing changed", tool, down(rep), f"ours-{rep}")
                same = tree_digest(source) == tree_digest(work / f"ours-{rep}") == tree_digest(work / f"aws-{rep}")
                if not same:
                    raise SystemExit("a downloaded tree differs from the source")
                if rep:
                    shutil.rmtree(work / f"ours-{rep}")
                    shutil.rmtree(work / f"aws-{rep}")
            print("downloaded trees identical to the source: True")

            # The library alone, without process start-up and imports: what the 1 s target is about.
            sys_env = dict(os.environ)
            os.environ.update({k: v for k, v in env.items() if k.startswith(("AWS_", "S3_", "GPU_DEPLOY"))})
            os.environ["S3_PREFIX"] = "ours-0"
            from deploy.settings import load_settings
            from deploy.storage import Storage
            from deploy.storage.sync import cache_for, plan_download, plan_upload

            storage = Storage.from_settings(load_settings())
            prefix = storage.key("datasets", "bench")
            started = time.monotonic()
            plan = plan_upload(storage, source, prefix, cache=cache_for(storage, prefix, source))
            t_plan_up = time.monotonic() - started
            started = time.monotonic()
            plan_down = plan_download(storage, prefix, work / "ours-0",
                                      cache=cache_for(storage, prefix, work / "ours-0"))
            t_plan_down = time.monotonic() - started
            os.environ.clear()
            os.environ.update(sys_env)
            assert not plan.transfers and not plan_down.transfers
            print(f"{'re-sync plan in-process (up/down)':<34} {t_plan_up:.2f} s / {t_plan_down:.2f} s")

            print()
            print(f"| run ({args.files} files, {total / MB:.0f} MB; median of {args.repeat}) | ours (fab) | aws s3 sync |")
            print("| --- | ---: | ---: |")
            for label, tools in results.items():
                print(f"| {label} | {statistics.median(tools['ours']):.2f} s | {statistics.median(tools['aws']):.2f} s |")
            print(f"| no-change plan inside the process, up / down | {t_plan_up:.2f} s / {t_plan_down:.2f} s | |")
            for label, line in lines.items():
                print(f"ours, {label}: {line}")
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
