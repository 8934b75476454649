"""What of the operator's working tree ships to a host (either runtime): git's ignore rules, then ``.deployignore``.

Every ``.gitignore`` in the tree applies to its folder and below (deeper files win, as in git);
``root/.deployignore`` (same syntax) is applied last, so it can exclude more or re-include with
``!``; :data:`ALWAYS_EXCLUDED` wins over both: secrets, history, environments and what the run
writes never travel. Matching is ``pathspec``'s :class:`~pathspec.GitIgnoreSpec` (git's own rules).

Secrets stay home whatever the ignore files say: :data:`SECRET_FILES` (env files by any common
name, private keys, cloud and package-registry credentials) and the active env file itself,
whatever its name (``keep_home``, plus ``$ENV_FILE``). A symlink ships only when it resolves to a
file inside the tree that would ship under its own name, so a link cannot carry ``~/.aws`` out.
Each file keeps its permission bits (``LocalFile.mode``): 0600 stays 0600, 0755 stays 0755.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pathspec import GitIgnoreSpec

from deploy.runtimes.code.layout import LOG, META
from deploy.settings import ENV_FILE_VARIABLE

IGNORE_FILE = ".gitignore"
DEPLOY_IGNORE = ".deployignore"
SECRET_FILES = (
    ".env", ".env.*", "*.env", ".envrc", "env.*.local",  # env files by any common name
    "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx",  # keys and key stores
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "ssh_host_*key*", "*.ppk", ".ssh/", ".gnupg/",  # SSH, GPG
    ".netrc", "_netrc", ".git-credentials", ".npmrc", ".pypirc", ".yarnrc.yml", ".docker/config.json",
    ".aws/", ".azure/", ".kube/", ".config/gcloud/", "credentials*.json", "*-credentials.json",
    "service-account*.json", "client_secret*.json", "secrets.*", ".secrets/", "*.tfvars", ".vault-token",
)
ALWAYS_EXCLUDED = (*SECRET_FILES, ".git/", ".venv/", "__pycache__/", "*.pyc", f"{META}/", "lightning_logs/",
                   ".resume/", LOG, f"{LOG}.1")
_ALWAYS = GitIgnoreSpec.from_lines(ALWAYS_EXCLUDED)


@dataclass(frozen=True)
class LocalFile:
    """A file to ship: where it is here (``root``/``rel``), its size, whole-second mtime and permission bits."""

    root: str
    rel: str
    size: int
    mtime: int
    executable: bool = False
    mode: int = 0o644

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
    return LocalFile(root, rel, st.st_size, int(st.st_mtime), bool(st.st_mode & 0o100), stat.S_IMODE(st.st_mode))


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


def _stays_home(root: str, rel: str, keep: set[str]) -> bool:
    """The active env file (by real path), or a link that leads out of the tree or to a secret in it."""
    path = os.path.join(root, *rel.split("/"))
    real = os.path.realpath(path)
    if real in keep:
        return True
    if not os.path.islink(path):
        return False
    if not real.startswith(root.rstrip(os.sep) + os.sep):
        return True
    return bool(_ALWAYS.match_file(os.path.relpath(real, root).replace(os.sep, "/")))


def active_env_files(keep_home: Iterable[str | os.PathLike[str]] = ()) -> set[str]:
    """Real paths of the env files that must never ship: ``keep_home`` and ``$ENV_FILE``."""
    named = [*keep_home, os.environ.get(ENV_FILE_VARIABLE, "")]
    return {os.path.realpath(os.path.expanduser(str(p))) for p in named if str(p)}


def select_files(root: str | os.PathLike[str], extra_ignore: str = DEPLOY_IGNORE,
                 keep_home: Iterable[str | os.PathLike[str]] = ()) -> dict[str, LocalFile]:
    """The working tree's files to ship, by path relative to ``root`` (see the module docstring).

    ``keep_home``: files that never ship whatever their name, such as the ``--env-file`` in use.
    """
    root = os.path.realpath(root)
    keep = active_env_files(keep_home)
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
            rel = rel_dir + name
            if not ignored(rules, rel, False) and not _stays_home(root, rel, keep):
                found = stat_file(root, rel)
                if found is not None:
                    files[rel] = found
    return files
