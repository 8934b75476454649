"""Small helpers the slower tests share: an operator's .env, and polling instead of sleeping."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from deploy.dev.waiting import wait_until  # noqa: F401  (the one poll, re-exported for the tests)


def write_dotenv(path: Path, values: Mapping[str, str]) -> Path:
    """Write ``values`` as a .env file, as a user would."""
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path
