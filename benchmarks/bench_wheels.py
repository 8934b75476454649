"""Replacement pods and the wheel store (issue 22): install-requirements from the bucket against the package index.

Starts its own moto S3 server and serves a PEP 503 package index over HTTP (``--index``: a ``simple/``
tree on this machine, default ``/opt/pypi``), counting the bytes it sends. The training project's
requirements.txt names packages the host's interpreter lacks (``--requirements``, default scipy, pandas
and scikit-learn with their dependencies). Each pod is an sshd of this machine whose pip sees only that
index, with an empty pip cache of its own; NATIVE_PYTHON is this virtualenv's interpreter (torch and
Lightning already there, as on a RunPod image). The deploy is the flow's, training not started.

1. the first deploy of the set: ``install-requirements`` from the index, which also builds the wheels
   and stores them in the bucket;
2. a replacement pod (another sshd, a fresh REMOTE_DIR and pip cache) with ``PACKAGE_INDEX=never``:
   ``install-requirements`` from the bucket's wheel store, and the bytes the index sent meanwhile;
3. on the same host, a cold ``python -c "import torch, lightning"`` (a fresh interpreter): what every
   training start pays anyway, for scale.

Run (as root, with the virtualenv)::

    .venv/bin/python -m benchmarks.bench_wheels [--runs 1] [--index /opt/pypi] [--requirements "scipy pandas"]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.servers import S3Server  # noqa: E402
from tests.harness.wheels import Deployer, Index, start_pod  # noqa: E402

STEP = "install-requirements"


def cold_import() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, lightning"], check=True, capture_output=True)
    return time.monotonic() - started


def one_run(work: Path, index: Index, s3: S3Server, bucket: str, requirements: list[str]) -> dict[str, float]:
    project = work / "project"
    (project / "mytrain").mkdir(parents=True)
    (project / "mytrain" / "__init__.py").write_text("VERSION = 1\n")
    (project / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
    operator = Deployer(project, {**s3.environ(bucket, prefix=f"bench-{uuid.uuid4().hex[:8]}"),
                                  "NATIVE_PYTHON": sys.executable, "RUNTIME": "native"})
    root = f"/tmp/gpu-deploy-bench-wheels-{uuid.uuid4().hex[:8]}"
    first, replacement = start_pod(work / "pod1", index), start_pod(work / "pod2", index)
    try:
        index.sent = 0
        _, logs, seconds = operator.deploy(first, f"{root}/one")
        from_index, index_bytes = seconds[STEP], index.sent
        stored = next((line.split("stored ", 1)[1] for line in logs if " stored " in line), "?")
        index.sent, index.requests[:] = 0, []
        _, logs, seconds = operator.deploy(replacement, f"{root}/two", PACKAGE_INDEX="never")
        assert any("installed from the bucket's wheel store" in line for line in logs), logs
        return {"from_index": from_index, "index_bytes": index_bytes, "from_store": seconds[STEP],
                "store_index_bytes": index.sent, "store_index_requests": len(index.requests),
                "cold_import": cold_import(), "stored": stored}  # type: ignore[dict-item]
    finally:
        first.stop()
        replacement.stop()
        subprocess.run(["rm", "-rf", root])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--index", default="/opt/pypi", help="a folder holding simple/<name>/ (PEP 503)")
    parser.add_argument("--requirements", default="scipy pandas scikit-learn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-wheels-") as tmp:
        s3 = S3Server(Path(tmp) / "s3").start()
        index = Index(Path(args.index))
        try:
            bucket = f"bench-wheels-{uuid.uuid4().hex[:8]}"
            s3.client().create_bucket(Bucket=bucket)
            runs = [one_run(Path(tmp) / f"run{i}", index, s3, bucket, args.requirements.split())
                    for i in range(args.runs)]
        finally:
            index.stop()
            s3.stop()
    load = os.getloadavg()
    print(f"requirements: {args.requirements}; stored: {runs[-1]['stored']}; runs: {len(runs)}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for name, what in (("from_index", "first deploy: install-requirements from the index, wheels stored"),
                       ("from_store", "replacement pod, PACKAGE_INDEX=never: install-requirements from the store"),
                       ("cold_import", 'cold python -c "import torch, lightning" on the same host')):
        values = [r[name] for r in runs]
        print(f"{what}: median {statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f})")
    print(f"bytes from the index: first deploy {runs[-1]['index_bytes'] / 1e6:.1f} MB; replacement pod "
          f"{max(r['store_index_bytes'] for r in runs)} bytes in {max(r['store_index_requests'] for r in runs)} "
          "requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
