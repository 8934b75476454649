"""gpu-deploy's own code a host needs (either runtime): ``deploy/training/``, ``deploy/remote/`` and what they import.

Computed from the imports (every ``import deploy...`` in those files, inside functions too, and the
packages above each module), so the list follows the code: the operator's SSH, image, runtime and
flow code and the demo tooling never travel. A unit test checks the closure against what importing
training/ and remote/ loads in a fresh interpreter.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path

from deploy.runtimes.code.layout import APP
from deploy.runtimes.code.tree import LocalFile, stat_file

PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder that holds the deploy package
ROOTS = ("deploy/training", "deploy/remote")


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


_FROM = re.compile(r"^[ \t]*from[ \t]+(deploy(?:\.\w+)*)[ \t]+import[ \t]+(\([^)]*\)|[^#\n]*)", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^#\n]*)", re.M)


def _imports(path: Path) -> set[str]:
    """Every ``deploy...`` module name an import in ``path`` names (``from x import y``: x and x.y).

    Read from the import statements' lines (inside functions too), not parsed: ten times faster than
    ``ast`` for the same names (a unit test compares the two over the whole package), and a deploy reads
    every file of training/ and remote/ before it plans.
    """
    text = path.read_text().replace("\\\n", " ")  # a backslash continuation joins its line
    found: set[str] = set()
    for module, names in _FROM.findall(text):
        found.add(module)
        for item in re.sub(r"#[^\n]*", "", names).strip("()").split(","):
            name = item.split(" as ")[0].strip()
            if name.isidentifier():
                found.add(f"{module}.{name}")
    for names in _IMPORT.findall(text):
        found.update(item.split(" as ")[0].strip() for item in names.split(","))
    return {name for name in found if name == "deploy" or name.startswith("deploy.")}


_PARSING = threading.Lock()


def host_modules(root: Path = PACKAGE_ROOT) -> frozenset[str]:
    """Module names (``deploy.training.entrypoint`` ...) the host-side code needs, packages included.

    Computed once per process, under a lock: a deploy to several hosts asks from one thread per host.
    """
    with _PARSING:
        return _host_modules(root)


@lru_cache(maxsize=None)
def _host_modules(root: Path) -> frozenset[str]:
    todo = [".".join(p.relative_to(root).with_suffix("").parts) for top in ROOTS
            for p in sorted((root / top).rglob("*.py")) if "__pycache__" not in p.parts]
    todo = [name[: -len(".__init__")] if name.endswith(".__init__") else name for name in todo]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        path = _module_file(root, name)
        if name in seen or path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages above it
        todo += sorted(_imports(path))
    return frozenset(seen)


def library_files(root: Path = PACKAGE_ROOT) -> dict[str, LocalFile]:
    """Those modules' files, by their path under ``REMOTE_DIR`` (``.gpu-deploy/app/deploy/...``)."""
    out: dict[str, LocalFile] = {}
    for name in sorted(host_modules(root)):
        path = _module_file(root, name)
        assert path is not None
        rel = path.relative_to(root).as_posix()
        found = stat_file(str(root), rel)
        if found is not None:
            out[f"{APP}/{rel}"] = found
    return out
