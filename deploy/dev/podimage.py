"""The test pod image: what a RunPod pod is, built here without a registry.

A RunPod pod is a container with sshd, Python and torch and no Docker inside. Its start script puts
the pod's ``PUBLIC_KEY`` env into ``/root/.ssh/authorized_keys`` and runs sshd in the foreground, as
RunPod's own images do. This image is the test base image (:mod:`deploy.dev.baseimage`: Debian with
python3 and torch in a virtualenv) plus openssh-server, installed by apt inside a ``docker build``
from the local base image (no registry is asked for anything). torch is made visible to the
system ``python3`` with a ``.pth`` file, because on RunPod ``python3`` over SSH has torch, and a
``--system-site-packages`` virtualenv (the native runtime's) must see it too.

The image is tagged by a hash of its recipe (and of the base image's) and reused while present.

Example::

    import docker
    image = ensure_pod_image(docker.from_env())
    print(image.tag, image.built)     # gpu-deploy-pod:5b0c2e9a7d41 True
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from dataclasses import asdict, dataclass

from deploy.dev.baseimage import VENV, BaseImageRecipe, ensure_base_image
from deploy.dev.locks import machine_lock
from deploy.errors import ImageError

RECIPE_LABEL = "gpu-deploy.pod-recipe"

START_SCRIPT = """#!/bin/sh
# Like RunPod's images: authorise the pod's PUBLIC_KEY, make this pod's host keys, run sshd in front.
set -e
mkdir -p /root/.ssh /run/sshd
chmod 700 /root/.ssh
if [ -n "$PUBLIC_KEY" ]; then
    printf '%s\\n' "$PUBLIC_KEY" >> /root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
fi
ssh-keygen -A >/dev/null
# SSHD_PORT/SSHD_LISTEN: only for a control plane that runs pods on the host's network (tests reach
# loopback servers that way); a pod on its own network listens on port 22 as on RunPod.
exec /usr/sbin/sshd -D -e -p "${SSHD_PORT:-22}" -o "ListenAddress=${SSHD_LISTEN:-0.0.0.0}"
"""


@dataclass(frozen=True)
class PodImageRecipe:
    """What goes on top of the base image. Its digest (with the base image's tag) names the image."""

    apt_packages: tuple[str, ...] = ("openssh-server", "openssh-sftp-server")
    python_minor: str = "3.11"  # bookworm's python3, the one the base image's virtualenv was made from
    repository: str = "gpu-deploy-pod"
    revision: int = 1

    def dockerfile(self, base_tag: str) -> str:
        site = f"{VENV}/lib/python{self.python_minor}/site-packages"
        return "\n".join([
            f"FROM {base_tag}",
            "RUN apt-get update"
            f" && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {' '.join(self.apt_packages)}"
            " && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_*"
            f" && echo {site} > /usr/lib/python3/dist-packages/gpu-deploy-torch.pth"
            " && mkdir -p /workspace",
            "COPY start.sh /start.sh",
            "RUN chmod 755 /start.sh",
            "EXPOSE 22",
            'CMD ["/start.sh"]',
            "",
        ])

    def digest(self, base_tag: str) -> str:
        recipe = {**{k: v for k, v in asdict(self).items() if k != "repository"},
                  "base": base_tag, "start": START_SCRIPT}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()

    def tag(self, base_tag: str) -> str:
        return f"{self.repository}:{self.digest(base_tag)[:12]}"


@dataclass(frozen=True)
class PodImageResult:
    tag: str
    image_id: str
    built: bool
    seconds: float = 0.0


def _context(dockerfile: str) -> io.BytesIO:
    """The build context as a tar in memory: the Dockerfile and the start script, nothing else."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in (("Dockerfile", dockerfile), ("start.sh", START_SCRIPT)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def ensure_pod_image(client, recipe: PodImageRecipe | None = None,
                     base: BaseImageRecipe | None = None, log=print) -> PodImageResult:
    """Return the pod image, building it (and the base image, when missing) first."""
    recipe = recipe or PodImageRecipe()
    base_tag = ensure_base_image(client, base, log=log).tag
    tag, digest = recipe.tag(base_tag), recipe.digest(base_tag)
    with machine_lock(f"image-{tag}"):  # another process may be building it: wait, then look again
        return _pod_image(client, recipe, base_tag, tag, digest, log)


def _pod_image(client, recipe: PodImageRecipe, base_tag: str, tag: str, digest: str, log) -> PodImageResult:
    import docker.errors

    try:
        image = client.images.get(tag)
        if image.labels.get(RECIPE_LABEL) == digest:
            return PodImageResult(tag=tag, image_id=image.id, built=False)
    except docker.errors.ImageNotFound:
        pass
    started = time.monotonic()
    log(f"pod image: {tag} from {base_tag} with {', '.join(recipe.apt_packages)}")
    try:
        image, _ = client.images.build(fileobj=_context(recipe.dockerfile(base_tag)), custom_context=True,
                                       tag=tag, labels={RECIPE_LABEL: digest}, rm=True, forcerm=True)
    except docker.errors.BuildError as exc:
        tail = "".join(str(chunk.get("stream", "")) for chunk in exc.build_log)[-2000:]
        raise ImageError(f"Building the pod image {tag} failed ({exc.msg}):\n{tail}") from None
    return PodImageResult(tag=tag, image_id=image.id, built=True, seconds=time.monotonic() - started)


def main() -> None:  # pragma: no cover - a command for people: python -m deploy.dev.podimage
    import docker

    result = ensure_pod_image(docker.from_env(timeout=900))
    state = f"built in {result.seconds:.0f} s" if result.built else "already present"
    print(f"{result.tag} ({result.image_id[:19]}): {state}")


if __name__ == "__main__":  # pragma: no cover
    main()
