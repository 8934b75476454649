"""The `.env` a host receives: only the keys training needs, in one dialect every reader agrees on.

Which keys go (:func:`plan_env`):

- the S3, training and deploy settings (their effective values: flags win), and what the deploy itself
  decides (``IMAGE``, ``DATA_DIR``, ``NODE_RANK`` ...);
- keys of the operator's `.env` file that match :data:`deploy.settings.TRAINING_SERVICE_KEYS`
  (``WANDB_*``, ``HF_*``, ``NCCL_*`` ...) or a pattern in ``SHIP_ENV_INCLUDE`` (``*`` ships every key);
- never ``RUNPOD_*``, ``SSH_*``, ``REMOTE_DIR``, ``ENV_FILE``, ``SHIP_ENV_*`` or what ``SHIP_ENV_EXCLUDE``
  names. Every other key stays on the laptop and is listed in :attr:`EnvShipment.left_behind`, so
  ``deploy-runpod --dry-run`` can say so.

The dialect (written by :func:`render_env` only)::

    AWS_SECRET_ACCESS_KEY='abc/def+ghi'
    WANDB_API_KEY='a b # not a comment $HOME'

- UTF-8; one ``KEY='value'`` per line, each ending in ``\\n``; keys sorted; no comments, no ``export``.
- ``KEY`` is ``[A-Za-z_][A-Za-z0-9_]*``.
- The value sits in single quotes and is taken literally by python-dotenv (``dotenv_values``, which
  :mod:`deploy.settings` and the training side use), docker-compose 1.29 (``env_file:``, through
  python-dotenv), Compose v2 (compose-go's dotenv: no escapes and no ``$`` interpolation inside
  single quotes) and the native supervisor (:func:`deploy.remote.supervisor.parse_dotenv`): ``#``,
  ``" "``, ``=``, ``"``, ``$HOME``, leading and trailing spaces and any printable Unicode arrive
  unchanged.
- Refused, with a :class:`ConfigError` naming the key (never the value), because some reader would
  change or split it: control characters (C0 including tab, DEL, C1 including U+0085) and every line
  separator (``\\n \\r \\v \\f``, U+001C-U+001E, U+0085, U+2028, U+2029), lone surrogates, a single
  quote, a backslash before another backslash or at the end (python-dotenv unescapes ``\\\\`` and
  ``\\'`` inside single quotes, Compose v2 does not), and ``${NAME}`` / ``${NAME:-default}``
  (python-dotenv and docker-compose 1.x expand them even inside single quotes, Compose v2 does not).

Secrets travel only inside the file: never in a command line (visible in ``ps``) or a compose file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploy.errors import ConfigError
from deploy.hosts.remote import run, write_atomic
from deploy.remote.supervisor import DOTENV_KEY, dotenv_refusal
from deploy.settings import SETTING_FIELDS, TRAINING_SERVICE_KEYS, Secret, Settings, read_env_file

if TYPE_CHECKING:
    from fabric import Connection

REMOTE_ENV = ".env"  # the shipped file, in REMOTE_DIR (mounted at the container's working directory)
# Always kept on the laptop, whatever the include list says.
OPERATOR_ONLY = ("RUNPOD_*", "SSH_*", "REMOTE_DIR", "ENV_FILE", "SHIP_ENV_*")
# Settings groups the host reads; the others (host, pods ...) steer the operator's side only.
SHIPPED_GROUPS = ("s3", "training", "deploy")


@dataclass(frozen=True)
class EnvShipment:
    """The file to write: key names may be shown, values never.

    ``left_behind``: keys the operator has set (in the `.env` file or as settings) that stay on the laptop.
    """

    keys: tuple[str, ...]
    _content: Secret
    left_behind: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self._content.reveal().encode()).hexdigest()

    def content(self) -> bytes:
        return self._content.reveal().encode()


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def render_env(values: Mapping[str, str]) -> str:
    """The host's `.env` text in the dialect above; ConfigError naming the first key it cannot carry.

    >>> render_env({"B": "x # y", "A": "$HOME"})
    "A='$HOME'\\nB='x # y'\\n"
    """
    lines = []
    for key in sorted(values):
        if not DOTENV_KEY.fullmatch(key):
            raise ConfigError(f"{key!r} cannot be a variable in the host's .env (letters, digits and _, not "
                              "starting with a digit); rename it or list it in SHIP_ENV_EXCLUDE.")
        why = dotenv_refusal(values[key])
        if why:
            raise ConfigError(f"The value of {key} contains {why}, which the host's .env cannot carry unchanged to "
                              f"every reader; change the value or list {key} in SHIP_ENV_EXCLUDE.")
        lines.append(f"{key}='{values[key]}'\n")
    return "".join(lines)


def _setting_values(settings: Settings) -> tuple[dict[str, str], set[str]]:
    """The shippable settings' values as text, and the keys of every setting the operator set."""
    values: dict[str, str] = {}
    for spec in SETTING_FIELDS:
        key = spec.metadata["key"]
        value = getattr(settings, spec.name)
        if spec.metadata["group"] not in SHIPPED_GROUPS or value is None or value == "":
            continue
        values[key] = value.reveal() if isinstance(value, Secret) else (
            ("1" if value else "0") if isinstance(value, bool) else str(value))
    given = {spec.metadata["key"] for spec in SETTING_FIELDS if settings.source(spec.metadata["key"]) != "default"}
    return values, given


def plan_env(settings: Settings, extra: Mapping[str, str] | None = None,
             environ: Mapping[str, str] | None = None) -> EnvShipment:
    """Choose the keys and render the file.

    Settings come from the effective settings (flags win); other keys of the `.env` file
    (``WANDB_API_KEY``, ``HF_TOKEN`` ...) go along when the default list or ``SHIP_ENV_INCLUDE``
    admits them, with the process environment's value when it has one. ``extra`` adds values the
    deploy decides (the image, ranks) on top. ``SHIP_ENV_EXCLUDE`` and :data:`OPERATOR_ONLY` win.
    """
    environ = os.environ if environ is None else environ
    include = TRAINING_SERVICE_KEYS + _patterns(settings.ship_env_include)
    exclude = OPERATOR_ONLY + _patterns(settings.ship_env_exclude)
    shippable, given = _setting_values(settings)
    in_file = read_env_file(settings.env_file_path) if settings.env_file_found else {}
    known = {spec.metadata["key"] for spec in SETTING_FIELDS}
    from_file = {k: environ.get(k, v) for k, v in in_file.items() if k not in known and _matches(k, include)}
    candidates = {**shippable, **from_file, **(extra or {})}
    chosen = {k: v for k, v in candidates.items() if not _matches(k, exclude)}
    content = render_env(chosen)
    left_behind = tuple(sorted((given | set(in_file)) - set(chosen)))
    return EnvShipment(keys=tuple(sorted(chosen)), _content=Secret(content), left_behind=left_behind)


def digests_command(remote_dir: str, names: tuple[str, ...]) -> list[str]:
    """``sha256sum`` of ``names`` in ``remote_dir``: what :func:`read_digests` reads (a missing file is left out)."""
    return ["sha256sum", *(posixpath.join(remote_dir, name) for name in names)]


def read_digests(output: str, names: tuple[str, ...]) -> dict[str, str]:
    """:func:`digests_command`'s output as ``{name: sha256}`` for those of ``names`` it lists."""
    found = (line.split(None, 1) for line in output.splitlines())
    digests = {posixpath.basename(pair[1].strip()): pair[0] for pair in found if len(pair) == 2}
    return {name: digest for name, digest in digests.items() if name in names}


def remote_digests(conn: Connection, remote_dir: str, names: tuple[str, ...]) -> dict[str, str]:
    """sha256 of each of ``names`` in ``remote_dir`` that exists there, by name, in one round trip."""
    result = run(conn, digests_command(remote_dir, names), "Reading the host's file digests", warn=True)
    return read_digests(result.stdout, names)


def remote_env_digest(conn: Connection, remote_dir: str) -> str | None:
    """sha256 of the host's current `.env`, or None (compared, so an unchanged file is not rewritten)."""
    return remote_digests(conn, remote_dir, (REMOTE_ENV,)).get(REMOTE_ENV)


def ship_env(conn: Connection, remote_dir: str, shipment: EnvShipment) -> bool:
    """Write ``REMOTE_DIR/.env`` atomically, mode 0600 from its first byte; False when it was already identical."""
    if remote_env_digest(conn, remote_dir) == shipment.digest:
        return False
    write_atomic(conn, posixpath.join(remote_dir, REMOTE_ENV), shipment.content(), mode=0o600)
    return True
