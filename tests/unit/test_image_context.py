"""The training image's build context (.dockerignore lets files in by name) holds every module the host code needs."""

from __future__ import annotations

import fnmatch

from deploy.runtimes.code.shipped import host_modules
from tests.harness.fab import REPO


def let_in() -> list[str]:
    """The patterns .dockerignore lets back in after ignoring everything (``!path``)."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line[1:].strip() for line in lines if line.startswith("!")]


def test_every_module_the_training_side_imports_is_in_the_image() -> None:
    patterns = let_in()
    missing = []
    for module in sorted(host_modules(REPO)):
        path = module.replace(".", "/")
        candidates = [f"{path}.py", f"{path}/__init__.py"]
        existing = [c for c in candidates if (REPO / c).is_file()]
        if not any(c == p or c.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(c, p)
                   for c in existing for p in patterns):
            missing.append(existing[0] if existing else path)
    assert missing == [], f".dockerignore leaves out what the training side imports: {missing}"
