"""The library's exceptions.

Every expected failure is a :class:`DeployError` whose message is one sentence that names
the thing to fix (a key, a host:port, a bucket). Tasks turn these into a clean exit; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DeployError(Exception):
    """Base class for every error the library raises on purpose."""


class ConfigError(DeployError):
    """Settings are missing or malformed."""


class HostError(DeployError):
    """An SSH host cannot be reached, authenticated or used."""


class StorageError(DeployError):
    """The S3 bucket cannot be reached or used, or an object is not what it should be."""


class ImageError(DeployError):
    """A Docker image cannot be found, exported or loaded."""


class TrainingError(DeployError):
    """The training side cannot resume or sync."""
