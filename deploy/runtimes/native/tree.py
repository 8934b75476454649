"""What of the operator's working tree ships to a native host: git's ignore rules, then ``.deployignore``.

Every ``.gitignore`` in the tree applies to its folder and below (deeper files win, as in git);
``root/.deployignore`` (same syntax) is applied last, so it can exclude more or re-include with
``!``; :data:`ALWAYS_EXCLUDED` wins over both: secrets, history, environments and what the run
writes never travel. Matching is ``pathspec``'s :class:`~pathspec.GitIgnoreSpec` (git's own rules).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pathspec import GitIgnoreSpec

from deploy.runtimes.native.layout import LOG, META

IGNORE_FILE = ".gitignore"
DEPLOY_IGNORE = ".deployignore"
ALWAYS_EXCLUDED = (".git/", ".env", ".env.*", ".venv/", "__pycache__/", "*.pyc", f"{META}/", "lightning_logs/",
                   ".resume/", LOG, f"{LOG}.1")
_ALWAYS = GitIgnoreSpec.from_lines(ALWAYS_EXCLUDED)


@dataclass(frozen=True)
class LocalFile:
    """A file to ship: where it is here (``root``/``rel``), its size, whole-second mtime and exec bit."""

    root: str
    rel: str
    size: int
    mtime: int
    executable: bool = False

    @property
    def path(self) -> str:
        return os.path.join(self.root, *self.rel.split("/"))


def stat_file(root: str, rel: str) -> LocalFile | None:
    """``root/rel`` as a :class:`LocalFile`; None for anything but a regular file (a dangling link ...)."""
    try:
        st = os.stat(os.path.join(root, *rel.split("/")))
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return LocalFile(root, rel, st.st_size, int(st.st_mtime), bool(st.st_mode & 0o100))


@dataclass(frozen=True)
class IgnoreLayer:
    """One ignore file: its rules, relative to the folder ``base`` ("" for the root, else "sub/dir/")."""

    base: str
    spec: GitIgnoreSpec

    def verdict(self, rel: str) -> bool | None:
        """True: ignored, False: re-included (``!``), None: no rule of this file matches."""
        if not rel.startswith(self.base):
            return None
        return self.spec.check_file(rel[len(self.base):]).include


def ignored(layers: list[IgnoreLayer], rel: str, is_dir: bool) -> bool:
    """Whether ``rel`` stays home: the last layer with a matching rule decides; ALWAYS_EXCLUDED wins."""
    path = rel + "/" if is_dir else rel
    if _ALWAYS.match_file(path):
        return True
    verdict = False
    for layer in layers:
        found = layer.verdict(path)
        if found is not None:
            verdict = found
    return verdict


def _layer(folder: str, name: str, base: str) -> list[IgnoreLayer]:
    path = Path(folder, name)
    if not path.is_file():
        return []
    return [IgnoreLayer(base, GitIgnoreSpec.from_lines(path.read_text(errors="replace").splitlines()))]


def select_files(root: str | os.PathLike[str], extra_ignore: str = DEPLOY_IGNORE) -> dict[str, LocalFile]:
    """The working tree's files to ship, by path relative to ``root`` (see the module docstring)."""
    root = os.path.abspath(root)
    files: dict[str, LocalFile] = {}
    inherited: dict[str, list[IgnoreLayer]] = {"": []}
    deploy_layer = _layer(root, extra_ignore, "")
    for current, dirs, names in os.walk(root):
        rel_dir = os.path.relpath(current, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        layers = inherited.pop(rel_dir, []) + _layer(current, IGNORE_FILE, rel_dir)
        rules = layers + deploy_layer
        dirs[:] = [d for d in sorted(dirs) if not ignored(rules, rel_dir + d, True)]
        for name in dirs:
            inherited[rel_dir + name + "/"] = layers
        for name in sorted(names):
            if not ignored(rules, rel_dir + name, False):
                found = stat_file(root, rel_dir + name)
                if found is not None:
                    files[rel_dir + name] = found
    return files
