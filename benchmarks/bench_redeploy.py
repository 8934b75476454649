"""Benchmark: redeploying a one-line code change, code sync against shipping the code in an image.

On this machine, as the tests do: a moto S3 server, an sshd standing in for a Docker GPU host, the
local Docker engine and the tests' base image (``deploy.dev.baseimage``; built first when absent).
The training project is a copy of tests/fixtures/trainer (``toytrain``). Setup, not measured:
``fab image-build --push`` (dependencies only) and a first ``fab deploy-runpod`` (compose runtime).

Then the same one-line change (``VERSION = 1`` -> ``2`` in ``toytrain/__init__.py``) three ways:

A. this kit: ``fab deploy-runpod``: the changed file is synced, the container recreated; measured
   until deploy returns (the new entrypoint has started) and until the new code's first log line.
B. the code in a thin top layer (the better case for images): ``docker build`` of
   ``FROM <deps image>`` + ``COPY`` the project, ``fab image-to-s3`` (only the new layer moves),
   ``fab deploy-runpod`` with that IMAGE (the host loads the missing layer, the service is recreated).
C. the code inside the image, pushed whole as older scripts did (``fab image-to-s3 --format=archive``):
   the push alone.

Run (as root, with the virtualenv):  ``.venv/bin/python -m benchmarks.bench_redeploy``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy import images  # noqa: E402
from tests.harness.fab import run_fab  # noqa: E402
from tests.harness.servers import S3Server, SshServer  # noqa: E402
from tests.harness.waiting import wait_until, write_dotenv  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "trainer"
TRAIN_COMMAND = "python -m toytrain fit --config config.yaml --data.dataset_dir data"
BENCH_IMAGE = "gpu-deploy-bench/redeploy"


def fab(operator: Path, *args: str) -> tuple[float, str]:
    started = time.monotonic()
    result = run_fab(*args, cwd=operator, timeout=1800)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"fab {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def steps_seconds(deploy_output: str) -> float:
    """What deploy says its steps on the host took ("write-env, sync-code, start in 10 s")."""
    match = re.search(r" in (\d+) s; training is running", deploy_output)
    return float(match.group(1)) if match else -1.0


def wait_for_log(operator: Path, text: str, timeout: float = 120) -> float:
    started = time.monotonic()
    wait_until(lambda: text in run_fab("logs", "--tail=200", cwd=operator).stdout, timeout, text)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/var/tmp")
    args = parser.parse_args()

    client = images.docker_client()
    from deploy.dev.baseimage import ensure_base_image

    base = ensure_base_image(client).tag
    tmp = Path(tempfile.mkdtemp(prefix="bench-redeploy-", dir=args.workdir))
    server, sshd = S3Server(tmp / "moto").start(), SshServer(tmp / "sshd").start()
    remote_dir = f"/tmp/gpu-deploy-bench-redeploy-{uuid.uuid4().hex[:6]}"
    project, operator = tmp / "my-trainer", tmp / "operator"
    shutil.copytree(FIXTURE, project)
    operator.mkdir()
    figures: dict[str, object] = {"load_before": os.getloadavg()}
    try:
        server.client().create_bucket(Bucket="bench-redeploy")
        values = {**server.environ("bench-redeploy", prefix="bench"), "RUNPOD_HOST": "127.0.0.1",
                  "RUNPOD_PORT": str(sshd.port), "RUNPOD_USER": sshd.user, "RUNPOD_SSH_KEY": str(sshd.client_key),
                  "SSH_KNOWN_HOSTS": str(tmp / "known_hosts"), "REMOTE_DIR": remote_dir, "RUNTIME": "compose",
                  "TRAIN_PROJECT": str(project), "TRAIN_COMMAND": TRAIN_COMMAND, "DATASET": str(project / "dataset"),
                  "IMAGE": f"{BENCH_IMAGE}:latest", "BASE_IMAGE": base}
        write_dotenv(operator / ".env", values)
        figures["setup image-build --push s"], _ = fab(operator, "image-build", "--push", "--network=none", "--force")
        figures["setup first deploy s"], _ = fab(operator, "deploy-runpod")
        figures["fab --list s (the command line's own start)"], _ = fab(operator, "--list")
        wait_for_log(operator, "toytrain: version 1")

        # A: this kit, code sync
        init = project / "toytrain" / "__init__.py"
        init.write_text(init.read_text().replace("VERSION = 1", "VERSION = 2"))
        seconds, out = fab(operator, "deploy-runpod")
        assert "sync-code: 1 files" in out and "load-image" not in out, out
        figures["A sync: deploy-runpod s"] = seconds
        figures["A sync: of which the host steps s"] = steps_seconds(out)
        figures["A sync: until new code logs s"] = seconds + wait_for_log(operator, "toytrain: version 2")
        figures["A sync: bytes moved"] = init.stat().st_size
        figures["A sync: image bytes moved"] = 0

        # B: the same change as a thin code layer on the dependency image
        deps = client.images.get(f"{BENCH_IMAGE}:latest")
        build_dir = tmp / "code-image"
        shutil.copytree(project, build_dir / "project", ignore=shutil.ignore_patterns("dataset", "lightning_logs"))
        (build_dir / "Dockerfile").write_text(f"FROM {deps.id}\nCOPY project /opt/code\n"
                                              "ENV PYTHONPATH=/opt/code:/workspace/.gpu-deploy/app\n")
        init.write_text(init.read_text().replace("VERSION = 2", "VERSION = 3"))
        shutil.copy(init, build_dir / "project" / "toytrain" / "__init__.py")
        started = time.monotonic()
        client.images.build(path=str(build_dir), tag=f"{BENCH_IMAGE}:code-v3", rm=True, network_mode="none")
        figures["B image: docker build s"] = time.monotonic() - started
        seconds, out = fab(operator, "image-to-s3", f"--image={BENCH_IMAGE}:code-v3")
        figures["B image: image-to-s3 s"], figures["B image: push output"] = seconds, out.strip().splitlines()[-1]
        # The host is this machine's engine: drop the built image so the host must load it from the bucket
        # (it keeps the dependency image, as a host running the previous version does).
        client.images.remove(f"{BENCH_IMAGE}:code-v3", force=True)
        write_dotenv(operator / ".env", {**values, "IMAGE": f"{BENCH_IMAGE}:code-v3"})
        seconds, out = fab(operator, "deploy-runpod")
        assert "load-image" in out, out
        figures["B image: deploy-runpod (load + recreate) s"] = seconds
        figures["B image: of which the host steps s"] = steps_seconds(out)
        figures["B image: total s"] = (figures["B image: docker build s"] + figures["B image: image-to-s3 s"]
                                       + seconds)

        # C: the whole image pushed as one archive, as older scripts did (the push alone)
        seconds, out = fab(operator, "image-to-s3", f"--image={BENCH_IMAGE}:code-v3", "--format=archive")
        figures["C whole image: image-to-s3 --format=archive s"] = seconds
        figures["C whole image: push output"] = out.strip().splitlines()[-1]
        figures["image size bytes"] = int(client.api.inspect_image(f"{BENCH_IMAGE}:code-v3")["Size"])
    finally:
        run_fab("stop", "--timeout=10", cwd=operator)
        for c in client.containers.list(all=True, filters={"label": "com.docker.compose.project=gpu-deploy-"
                                                                    + Path(remote_dir).name}):
            c.remove(force=True)
        for ref in (f"{BENCH_IMAGE}:code-v3",):
            try:
                client.images.remove(ref, force=True)
            except Exception:  # noqa: BLE001 - not there
                pass
        sshd.stop()
        server.stop()
        subprocess.run(["rm", "-rf", remote_dir, str(tmp)], check=False)
    figures["load_after"] = os.getloadavg()
    print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
