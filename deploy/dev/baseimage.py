"""A Python training base image built without any container registry.

Where no registry is reachable (this project's CI, air-gapped labs) the training image still needs
a base with Python, torch and Lightning. This module bootstraps a minimal Debian (mmdebstrap, else
debootstrap), pip-installs the training stack into a virtualenv inside it through a chroot, and
`docker import`s the result.
The image is labelled with a hash of its recipe and reused while the recipe is unchanged: the
first build takes a few minutes, later calls none.

Example::

    import docker
    image = ensure_base_image(docker.from_env())
    print(image.tag, image.built)     # gpu-deploy-base:3f2a9c1d0b7e True
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deploy.dev.locks import machine_lock
from deploy.errors import ImageError

RECIPE_LABEL = "gpu-deploy.recipe"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
VENV = "/opt/venv"
IMAGE_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BaseImageRecipe:
    """What goes into the base image. Its :meth:`digest` names the image, so changing it rebuilds."""

    suite: str = "bookworm"
    apt_packages: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
    pip_packages: tuple[str, ...] = (
        "torch==2.13.0",
        "lightning>=2.5,<3",
        "jsonargparse[signatures]>=4.27",
        "tensorboardX>=2.6",
        "boto3>=1.34",
        "python-dotenv>=1.0",
        "setuptools>=61",
        "wheel",
    )
    repository: str = "gpu-deploy-base"
    revision: int = 1  # bump when the build steps below change in a way that alters the image

    def digest(self) -> str:
        recipe = {k: v for k, v in asdict(self).items() if k != "repository"}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{self.repository}:{self.digest()[:12]}"


@dataclass(frozen=True)
class BaseImageResult:
    tag: str
    image_id: str
    built: bool
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)


def apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (deb822 `.sources` or classic `sources.list`)."""
    candidates: list[str] = []
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        candidates += re.findall(r"^URIs:\s*(\S+)", path.read_text(), flags=re.M)
    sources_list = apt_dir / "sources.list"
    if sources_list.exists():
        candidates += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", sources_list.read_text(), flags=re.M)
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def local_wheel_dirs() -> list[str]:
    """Folders pip is told to find wheels in (PIP_FIND_LINKS), where torch may lie as a file."""
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    return [d for d in links if os.path.isdir(d)]


def bootstrapper() -> str | None:
    """The tool that makes the minimal Debian: mmdebstrap (apt's downloads and unpacking without a sync per
    file: 16-24 s here where debootstrap takes 40 s), else debootstrap; None when neither is installed."""
    return next((tool for tool in ("mmdebstrap", "debootstrap") if shutil.which(tool)), None)


def bootstrap_command(tool: str, recipe: BaseImageRecipe, root: Path, mirror: str) -> list[str]:
    """The command that makes the minimal Debian of ``recipe`` in ``root`` (which must not exist) with ``tool``."""
    include = f"--include={','.join(recipe.apt_packages)}"
    if tool == "mmdebstrap":
        return [tool, "--variant=minbase", include, "--mode=root", "--quiet", recipe.suite, str(root), mirror]
    return [tool, "--variant=minbase", include, recipe.suite, str(root), mirror]


def find_image(client, recipe: BaseImageRecipe):
    """The image built from ``recipe``, or None."""
    import docker.errors

    try:
        image = client.images.get(recipe.tag)
    except docker.errors.ImageNotFound:
        return None
    return image if image.labels.get(RECIPE_LABEL) == recipe.digest() else None


def ensure_base_image(client, recipe: BaseImageRecipe | None = None, log=print) -> BaseImageResult:
    """Return the base image for ``recipe``, building it first when the engine does not have it."""
    recipe = recipe or BaseImageRecipe()
    existing = find_image(client, recipe)
    if existing is not None:
        return BaseImageResult(tag=recipe.tag, image_id=existing.id, built=False)
    with machine_lock(f"image-{recipe.tag}"):  # another process may be building it: wait, then look again
        existing = find_image(client, recipe)
        if existing is not None:
            return BaseImageResult(tag=recipe.tag, image_id=existing.id, built=False)
        return build_base_image(client, recipe, log=log)


def _run(cmd: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace")[-3000:]
        raise ImageError(f"Building the base image failed while {what} (exit {proc.returncode}):\n{tail}")


def build_base_image(client, recipe: BaseImageRecipe, log=print,
                     workdir: str | None = None) -> BaseImageResult:
    """mmdebstrap (or debootstrap) -> chroot pip install -> docker import. Needs root and one of those tools."""
    if os.geteuid() != 0:
        raise ImageError("Building the base image needs root (mmdebstrap or debootstrap, and chroot); run it as root.")
    tool = bootstrapper()
    if tool is None:
        raise ImageError("Neither mmdebstrap nor debootstrap is installed; run: apt-get install mmdebstrap")
    started = time.monotonic()
    mirror = apt_mirror()
    with tempfile.TemporaryDirectory(prefix="gpu-deploy-base-", dir=workdir or "/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        log(f"base image: {tool} {recipe.suite} from {mirror}")
        _run(bootstrap_command(tool, recipe, root, mirror), f"running {tool}")
        _install_python(root, recipe, log)
        _import(client, root, recipe, log)
    image = find_image(client, recipe)
    if image is None:
        raise ImageError(f"docker import did not produce {recipe.tag}; check `docker images`.")
    return BaseImageResult(tag=recipe.tag, image_id=image.id, built=True,
                           seconds=time.monotonic() - started, steps=[tool, "pip install", "docker import"])


def _install_python(root: Path, recipe: BaseImageRecipe, log) -> None:
    """A virtualenv with the recipe's packages inside the chroot; nothing of the host's is kept."""
    # The chroot reaches the package index with the host's DNS and CA bundle; neither is kept.
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    shutil.copy(HOST_CA_BUNDLE, root / "tmp/host-ca.crt")
    wheels = root / "tmp/wheels"
    wheels.mkdir()
    for folder in local_wheel_dirs():
        for wheel in glob.glob(os.path.join(folder, "torch-*.whl")):
            shutil.copy(wheel, wheels)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PIP_CERT": "/tmp/host-ca.crt",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DEFAULT_TIMEOUT": "180",
    }
    log(f"base image: pip install {' '.join(recipe.pip_packages)}")
    _run(["chroot", str(root), "python3", "-m", "venv", VENV], "creating the virtualenv", env)
    _run(["chroot", str(root), f"{VENV}/bin/pip", "install", "--find-links", "/tmp/wheels",
          *recipe.pip_packages], "installing Python packages in the chroot", env)
    shutil.rmtree(wheels)
    (root / "tmp/host-ca.crt").unlink()
    (root / "etc/resolv.conf").write_text("")
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (root / leftover).glob("*"):
            if path.is_file():
                path.unlink()


def _import(client, root: Path, recipe: BaseImageRecipe, log) -> None:
    """``docker import`` the root filesystem, streamed from tar, labelled with the recipe's digest."""
    log(f"base image: docker import as {recipe.tag}")
    changes = [
        f"ENV PATH={IMAGE_PATH}",
        "ENV LANG=C.UTF-8",
        "ENV PYTHONUNBUFFERED=1",
        f"LABEL {RECIPE_LABEL}={recipe.digest()}",
        'CMD ["python3"]',
    ]
    repository, tag = recipe.tag.split(":")
    tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    try:
        client.api.import_image(src=tar.stdout, repository=repository, tag=tag, changes=changes, stream_src=True)
    finally:
        tar.stdout.close()
        if tar.wait() != 0:
            raise ImageError("Building the base image failed while archiving the root filesystem.")


def main() -> None:  # pragma: no cover - a command for people: python -m deploy.dev.baseimage
    import docker

    result = ensure_base_image(docker.from_env(timeout=900))
    state = f"built in {result.seconds:.0f} s" if result.built else "already present"
    print(f"{result.tag} ({result.image_id[:19]}): {state}")


if __name__ == "__main__":  # pragma: no cover
    main()
