"""The whole loop on this machine with nothing configured: ``scripts/demo`` runs this.

An embedded S3 server (moto) on loopback is the bucket; an sshd on loopback makes this machine the
GPU host. The demo runs the commands an operator would, printing each one and what it shows:
image-build --push, deploy-runpod, status, sync-from-runpod, s3.checkpoints and runs (the run it
made, with its cost at a made-up price for this machine). It ends with where the checkpoints and
logs are and the commands for a real setup, and stops what it started. A second run reuses the
images it built (the bucket is in memory and starts empty each time).

The demo's training project (``TRAIN_PROJECT``) holds no code: the demo model comes with
gpu-deploy (``python -m deploy.training.demo fit``, the default ``TRAIN_COMMAND``). The servers'
keys and logs live beside it, never in it, so none of them travels as code.

    python -m deploy.dev.quickstart [--workdir .demo] [--epochs 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deploy.errors import DeployError

REPO = Path(__file__).resolve().parents[2]
DEMO_IMAGE = "gpu-deploy-demo:latest"
PUBLIC_BASE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
BUCKET = "gpu-deploy-demo"
PRICE_PER_HOUR = "24.00"  # made up (8 x H100 at about $3/h each), so a run of seconds shows a cost in `fab runs`
PROJECT_NOTE = """\
The demo's training project (TRAIN_PROJECT). It holds no code on purpose: the demo model comes with
gpu-deploy (`python -m deploy.training.demo fit`, the default TRAIN_COMMAND). For a real run, your
trainer's folder takes its place: see README.md, "Quick start".
"""


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def fab(workdir: Path, *args: str, check: bool = True, show: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a `fab` command in the demo folder (its .env) and show it as the operator would type it."""
    if show:
        print(f"$ fab {shlex.join(args)}", flush=True)
    fab_bin = Path(sys.executable).parent / "fab"
    proc = subprocess.run([str(fab_bin), "--search-root", str(REPO), *args], cwd=workdir, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT if show else subprocess.PIPE,
                          stdin=subprocess.DEVNULL)
    if show:
        print(proc.stdout.rstrip(), flush=True)
    if check and proc.returncode != 0:
        raise DeployError(f"`fab {' '.join(args)}` failed (exit {proc.returncode}); "
                          + ("see its output above." if show else (proc.stderr or proc.stdout).strip()[-500:]))
    return proc


def base_image(client) -> str:
    """This machine's own base image where no registry is reachable (Linux, root, mmdebstrap or debootstrap), else a
    public one."""
    if os.environ.get("BASE_IMAGE"):
        print(f"    base image {os.environ['BASE_IMAGE']} (BASE_IMAGE from the environment)")
        return os.environ["BASE_IMAGE"]
    from deploy.dev.baseimage import bootstrapper, ensure_base_image

    if platform.system() == "Linux" and os.geteuid() == 0 and bootstrapper():
        result = ensure_base_image(client, log=lambda line: print(f"    {line}", flush=True))
        print(f"    base image {result.tag} ({'built' if result.built else 'reused'}: Python, torch and Lightning, "
              "made here without a registry)")
        return result.tag
    print(f"    base image {PUBLIC_BASE} (pulled from its registry by the build)")
    return PUBLIC_BASE


def wait_for_exit(client, project: str, timeout: float) -> str:
    """Wait for the demo's training container to finish; return its status."""
    deadline = time.monotonic() + timeout
    status = "missing"
    while time.monotonic() < deadline:
        containers = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
        if containers:
            containers[0].reload()
            status = containers[0].status
            if status == "exited":
                return f"exited with {containers[0].attrs['State']['ExitCode']}"
        time.sleep(2)
    return status


def run(workdir: Path, epochs: int, keep: bool) -> int:
    import docker

    from deploy.dev.embedded import S3Server, SshServer

    workdir.mkdir(parents=True, exist_ok=True)
    client = docker.from_env(timeout=900)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        raise DeployError(f"The Docker engine is not reachable ({exc.__class__.__name__}); start it and check "
                          "`docker info`.") from exc

    say("Starting an embedded S3 server (moto) and an sshd on loopback: this machine plays the GPU host")
    s3 = S3Server(workdir / "moto").start()
    ssh: SshServer | None = None
    remote_dir = workdir / "host" / "demo-train"
    compose_project = "gpu-deploy-" + remote_dir.name
    try:
        s3.client().create_bucket(Bucket=BUCKET)
        ssh = SshServer(workdir / "sshd").start()
        print(f"    S3 at {s3.endpoint_url} (bucket {BUCKET}); host at {ssh.user}@127.0.0.1:{ssh.port}")

        say("Choosing the base image the training image is built on")
        base = base_image(client)
        project = workdir / "project"
        project.mkdir(exist_ok=True)
        (project / "README.md").write_text(PROJECT_NOTE)
        shutil.rmtree(remote_dir / "lightning_logs", ignore_errors=True)
        env = {
            **s3.environ(BUCKET, prefix="demo"),
            "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(ssh.port), "RUNPOD_USER": ssh.user,
            "RUNPOD_SSH_KEY": str(ssh.client_key), "SSH_KNOWN_HOSTS": str(workdir / "known_hosts"),
            "REMOTE_DIR": str(remote_dir), "TRAIN_PROJECT": "project", "IMAGE": DEMO_IMAGE, "BASE_IMAGE": base,
            "MAX_EPOCHS": str(epochs), "HOST_PRICE_PER_HOUR": PRICE_PER_HOUR,
        }
        dotenv = workdir / ".env"
        dotenv.unlink(missing_ok=True)
        with os.fdopen(os.open(dotenv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write("".join(f"{k}={v}\n" for k, v in env.items()))  # 0600 from the first byte
        print(f"    settings in {dotenv} (`fab config` shows them); the training project is {project} (no code: "
              "the demo model comes with gpu-deploy)")

        return operator_loop(workdir, client, compose_project, epochs)
    finally:
        if not keep:
            clean_up(client, compose_project, ssh, s3)


def operator_loop(workdir: Path, client, compose_project: str, epochs: int) -> int:
    """The operator's commands, as a user runs them, with what each shows; 0 when training finished."""
    say("Building the training image (BASE_IMAGE + the train extra) and pushing it to the bucket")
    fab(workdir, "image-build", "--push")
    say("Deploying to the host: probe, .env, code, image, compose service with S3 sync on")
    fab(workdir, "deploy-runpod")
    say(f"Training {epochs} epochs; checkpoints and logs go to S3 as it runs")
    status = wait_for_exit(client, compose_project, timeout=600)
    print(f"    training container {status}")
    fab(workdir, "status", check=False)
    say("Bringing the results back")
    fab(workdir, "sync-from-runpod", "--path=lightning_logs", f"--dest={workdir}")
    fab(workdir, "s3.checkpoints")
    say(f"The run in the ledger, with its cost (HOST_PRICE_PER_HOUR={PRICE_PER_HOUR}: a made-up price for this "
        "machine, an 8-GPU node's, so a run of seconds costs something)")
    fab(workdir, "runs")
    logs = workdir / "lightning_logs"
    say("Done")
    run = newest_run(workdir)
    if run:
        print(f"    run:         {run['run_id']}, {run.get('state')}, cost {run.get('cost')} "
              f"(`fab runs.show --run {run['run_id']}` shows its timeline)")
    print(f"    checkpoints: s3://{BUCKET}/demo/checkpoints/ (listed above) and {logs}/version_*/checkpoints")
    print(f"    logs:        {logs}")
    print(f"    TensorBoard: pip install tensorboard && tensorboard --logdir {logs}")
    print("    For a real run (README.md, \"Quick start\"): cp .env.example .env, fill in your bucket, host and "
          "TRAIN_PROJECT, then")
    print("        fab s3.check && fab image-build --push && fab deploy-runpod")
    print("    On a RunPod pod with RUNPOD_API_KEY set: fab pods.up && fab deploy-runpod, or a managed run: fab train")
    return 0 if status.endswith(" 0") else 1


def newest_run(workdir: Path) -> dict | None:
    """The run the demo made, as `fab runs --json` has it (not shown: the table above is)."""
    proc = fab(workdir, "runs", "--json", check=False, show=False)
    try:
        rows = json.loads(proc.stdout)
    except ValueError:
        return None
    return rows[0] if rows else None


def clean_up(client, compose_project: str, ssh, s3) -> None:
    """Remove the demo container and stop the embedded servers; the images stay for the next run."""
    label = f"com.docker.compose.project={compose_project}"
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)
    if ssh is not None:
        ssh.stop()
    s3.stop()
    print("    stopped the embedded S3 server and sshd; removed the demo container (images are kept for "
          "the next run)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".demo", help="Folder for the demo's .env, host dir and results.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs the demo model trains (default 3).")
    parser.add_argument("--keep", action="store_true", help="Leave the servers and the container running.")
    args = parser.parse_args(argv)
    try:
        return run(Path(args.workdir).resolve(), args.epochs, args.keep)
    except DeployError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
