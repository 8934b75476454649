"""Small images for the tests, built locally: no registry is reachable here."""

from __future__ import annotations

import shutil
from pathlib import Path

BUSYBOX = "/bin/busybox"
BUSYBOX_TAG = "gpu-deploy-test/busybox:latest"

DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["sh"]
"""


def build_busybox_image(client, workdir: Path, tag: str = BUSYBOX_TAG, extra: str = "") -> str:
    """Build FROM scratch with Debian's static busybox; ``extra`` appends Dockerfile lines."""
    if not Path(BUSYBOX).exists():
        raise FileNotFoundError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, workdir / "busybox")
    (workdir / "Dockerfile").write_text(DOCKERFILE + extra)
    client.images.build(path=str(workdir), tag=tag, rm=True)
    return tag
