"""The `.env` a host receives: only the keys training needs, written over SFTP with mode 0600.

Operator-only keys (``RUNPOD_API_KEY``, host and SSH settings) never leave the laptop. Both lists
are configurable (``SHIP_ENV_INCLUDE`` / ``SHIP_ENV_EXCLUDE``, comma-separated glob patterns).
Secrets travel only inside the file: never in a command line (visible in ``ps``) or a compose file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from deploy.errors import ConfigError, HostError
from deploy.settings import SETTING_FIELDS, Secret, Settings, read_env_file

# Always kept on the laptop, whatever the include list says.
OPERATOR_ONLY = ("RUNPOD_*", "SSH_*", "REMOTE_DIR", "ENV_FILE", "SHIP_ENV_*")


@dataclass(frozen=True)
class EnvShipment:
    """The file to write: key names may be shown, values never."""

    keys: tuple[str, ...]
    _content: Secret

    @property
    def digest(self) -> str:
        return hashlib.sha256(self._content.reveal().encode()).hexdigest()

    def content(self) -> bytes:
        return self._content.reveal().encode()


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def plan_env(settings: Settings, extra: Mapping[str, str] | None = None,
             environ: Mapping[str, str] | None = None) -> EnvShipment:
    """Choose the keys and render the file.

    Known training and S3 settings come from the effective settings (flags win); other keys in the
    `.env` file (``WANDB_API_KEY``, ``HF_TOKEN`` ...) go along when the include list admits them.
    ``extra`` adds values the deploy decides (the image, ranks) on top.
    """
    environ = os.environ if environ is None else environ
    include = _patterns(settings.ship_env_include)
    exclude = OPERATOR_ONLY + _patterns(settings.ship_env_exclude)
    values: dict[str, str] = {}
    for spec in SETTING_FIELDS:
        key = spec.metadata["key"]
        if spec.metadata["group"] == "host":
            continue
        value = getattr(settings, spec.name)
        if value is None or value == "":
            continue
        values[key] = value.reveal() if isinstance(value, Secret) else (
            ("1" if value else "0") if isinstance(value, bool) else str(value))
    if settings.env_file_found:
        known = {spec.metadata["key"] for spec in SETTING_FIELDS}
        for key, value in read_env_file(settings.env_file_path).items():
            if key not in known:
                values[key] = environ.get(key, value)
    values.update(extra or {})
    chosen = {k: v for k, v in values.items() if _matches(k, include) and not _matches(k, exclude)}
    for key, value in chosen.items():
        if "\n" in value or "\r" in value:
            raise ConfigError(f"The value of {key} has a line break, which a .env file cannot carry; remove it.")
    content = "".join(f"{k}={v}\n" for k, v in sorted(chosen.items()))
    return EnvShipment(keys=tuple(sorted(chosen)), _content=Secret(content))


def remote_env_digest(conn, remote_dir: str) -> str | None:
    """sha256 of the host's current `.env`, or None (compared, so an unchanged file is not rewritten)."""
    path = posixpath.join(remote_dir, ".env")
    result = conn.run(f"sha256sum {path} 2>/dev/null", hide=True, warn=True, in_stream=False)
    return result.stdout.split()[0] if result.ok and result.stdout.strip() else None


def ship_env(conn, remote_dir: str, shipment: EnvShipment) -> bool:
    """Write ``REMOTE_DIR/.env`` with mode 0600 atomically; False when it was already identical."""
    if remote_env_digest(conn, remote_dir) == shipment.digest:
        return False
    path = posixpath.join(remote_dir, ".env")
    tmp = path + ".tmp"
    try:
        sftp = conn.sftp()
        with sftp.open(tmp, "wb") as handle:
            sftp.chmod(tmp, 0o600)  # before a single byte of it is written
            handle.write(shipment.content())
        sftp.posix_rename(tmp, path)
    except OSError as exc:
        raise HostError(f"Writing {path} on {conn.host}:{conn.port} failed ({exc}); check that "
                        f"{remote_dir} exists and is writable.") from exc
    return True
