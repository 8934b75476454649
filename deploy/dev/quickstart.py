"""The whole loop on this machine with nothing configured: ``scripts/demo`` runs this.

An embedded S3 server (moto) on loopback is the bucket; an sshd on loopback makes this machine the
GPU host. The demo builds the training image (the demo model), then runs the same `fab` commands an
operator would, printing each one: image-to-s3, deploy-runpod, status, sync-from-runpod. When the
short training run ends it shows where the checkpoints and logs are, and stops what it started.
A second run reuses the images it built (the bucket is in memory and starts empty each time).

    python -m deploy.dev.quickstart [--workdir .demo] [--epochs 3] [--keep]
"""

from __future__ import annotations

import argparse
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


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def fab(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a `fab` command in the demo folder (its .env) and show it as the operator would type it."""
    print(f"$ fab {shlex.join(args)}", flush=True)
    fab_bin = Path(sys.executable).parent / "fab"
    proc = subprocess.run([str(fab_bin), "--search-root", str(REPO), *args], cwd=workdir, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    print(proc.stdout.rstrip(), flush=True)
    if check and proc.returncode != 0:
        raise DeployError(f"`fab {' '.join(args)}` failed (exit {proc.returncode}); see its output above.")
    return proc


def base_image(client) -> str:
    """This machine's own base image where no registry is reachable (Linux, root, debootstrap), else a public one."""
    if os.environ.get("BASE_IMAGE"):
        return os.environ["BASE_IMAGE"]
    if platform.system() == "Linux" and os.geteuid() == 0 and shutil.which("debootstrap"):
        from deploy.dev.baseimage import ensure_base_image

        result = ensure_base_image(client, log=lambda line: print(f"    {line}", flush=True))
        print(f"    base image {result.tag} ({'built' if result.built else 'reused'})")
        return result.tag
    return PUBLIC_BASE


def build_training_image(client, base: str) -> str:
    started = time.monotonic()
    client.images.build(path=str(REPO), dockerfile="docker/Dockerfile", tag=DEMO_IMAGE, rm=True, forcerm=True,
                        buildargs={"BASE_IMAGE": base})
    print(f"    {DEMO_IMAGE} on {base} in {time.monotonic() - started:.0f} s")
    return DEMO_IMAGE


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
    project = "gpu-deploy-" + remote_dir.name
    try:
        s3.client().create_bucket(Bucket=BUCKET)
        ssh = SshServer(workdir / "sshd").start()
        print(f"    S3 at {s3.endpoint_url} (bucket {BUCKET}); host at {ssh.user}@127.0.0.1:{ssh.port}")

        say("Building the training image (demo model)")
        image = build_training_image(client, base_image(client))

        shutil.rmtree(remote_dir / "lightning_logs", ignore_errors=True)
        env = {
            **s3.environ(BUCKET, prefix="demo"),
            "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(ssh.port), "RUNPOD_USER": ssh.user,
            "RUNPOD_SSH_KEY": str(ssh.client_key), "SSH_KNOWN_HOSTS": str(workdir / "known_hosts"),
            "REMOTE_DIR": str(remote_dir), "IMAGE": image, "MAX_EPOCHS": str(epochs),
        }
        dotenv = workdir / ".env"
        dotenv.unlink(missing_ok=True)
        with os.fdopen(os.open(dotenv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write("".join(f"{k}={v}\n" for k, v in env.items()))  # 0600 from the first byte
        print(f"    settings in {workdir / '.env'} (fab config shows them)")

        return operator_loop(workdir, client, project, epochs)
    finally:
        if not keep:
            clean_up(client, project, ssh, s3)


def operator_loop(workdir: Path, client, project: str, epochs: int) -> int:
    """The operator's commands, as a user runs them, with what each shows; 0 when training finished."""
    say("Pushing the image to the bucket")
    fab(workdir, "image-to-s3")
    say("Deploying to the host: probe, .env, image, compose service with S3 sync on")
    fab(workdir, "deploy-runpod")
    say(f"Training {epochs} epochs; checkpoints and logs go to S3 as it runs")
    status = wait_for_exit(client, project, timeout=600)
    print(f"    training container {status}")
    fab(workdir, "status", check=False)
    say("Bringing the results back")
    fab(workdir, "sync-from-runpod", "--path=lightning_logs", f"--dest={workdir}")
    fab(workdir, "s3.checkpoints")
    logs = workdir / "lightning_logs"
    say("Done")
    print(f"    checkpoints: s3://{BUCKET}/demo/checkpoints/ (listed above) and {logs}/version_*/checkpoints")
    print(f"    logs:        {logs}")
    print(f"    TensorBoard: pip install tensorboard && tensorboard --logdir {logs}")
    print("    For a real run: copy .env.example to .env, fill in your bucket and host, then "
          "fab image-to-s3 && fab deploy-runpod")
    return 0 if status.endswith(" 0") else 1


def clean_up(client, project: str, ssh, s3) -> None:
    """Remove the demo container and stop the embedded servers; the images stay for the next run."""
    for container in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
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
