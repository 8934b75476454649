"""One typed settings object, read with one precedence: flag > process environment > `.env` > default.

Keys are named as users already name them in their `.env` files (``AWS_ACCESS_KEY_ID``,
``S3_BUCKET``, ``RUNPOD_HOST`` ...). Every value remembers where it came from, so
``fab config`` can say so, and secrets are a :class:`Secret`, which never shows its value.

Why one module of this size: it is one table (every setting with its key, group, parser, default and
help, from which `.env.example` and README's settings table are generated) and the one loader that
reads it; split, the table would have to be reassembled in a third place.

Example::

    settings = load_settings(overrides={"S3_BUCKET": "my-bucket"})
    settings.require("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET")
    print(settings.s3_bucket, settings.source("S3_BUCKET"))   # my-bucket flag
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dotenv import dotenv_values

from deploy import redact
from deploy.errors import ConfigError

ENV_FILE_VARIABLE = "ENV_FILE"
"""The process environment variable that points at another `.env` file."""

DEFAULT_ENV_FILE = ".env"

PRECISIONS = (
    "64", "64-true", "32", "32-true", "16", "16-mixed", "16-true",
    "bf16", "bf16-mixed", "bf16-true", "transformer-engine", "transformer-engine-float16",
)
RETRY_MODES = ("legacy", "standard", "adaptive")
ADDRESSING_STYLES = ("auto", "path", "virtual")

TRAINING_SERVICE_KEYS = (
    "WANDB_*", "HF_*", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_*", "TRANSFORMERS_*", "NEPTUNE_*", "COMET_*",
    "MLFLOW_*", "CLEARML_*", "PYTHON*", "CUDA_*", "NCCL_*", "TORCH_*", "OMP_*", "MKL_*", "TOKENIZERS_*",
    "PL_*", "TRAIN_*", "WARM_*",
)
"""Keys of the operator's `.env` that go to the host without being listed: the usual training services
and runtime knobs. Anything else (a GitHub token, another account's AWS session) stays on the laptop
unless ``SHIP_ENV_INCLUDE`` names it."""


class Secret:
    """A string that never shows itself: masked in ``repr``, ``str``, f-strings and logs.

    >>> key = Secret("not-a-real-key")
    >>> f"{key}"
    '********'
    >>> key.reveal()
    'not-a-real-key'
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        redact.register(value)  # and never in a log record either (fab --debug logs every library's requests)

    def reveal(self) -> str:
        """The value itself: pass it to a client, never to a print or a log."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********" if self._value else ""

    __format__ = lambda self, spec: format(str(self), spec)  # noqa: E731


# --------------------------------------------------------------------------- parsers
# Each parser takes the raw string (never empty: empty means "unset" for optional values)
# and returns the typed value or raises ValueError with a short reason.


def _parse_int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be a whole number, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return parse


def _parse_bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be 1 or 0 (true/false), got {raw!r}")


def _parse_choice(choices: Iterable[str]) -> Callable[[str], str]:
    allowed = tuple(choices)

    def parse(raw: str) -> str:
        value = raw.strip()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {raw!r}")
        return value

    return parse


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_bucket(raw: str) -> str:
    """Validate a bucket name by the S3 naming rules, so a typo fails here and not in a 400."""
    name = raw.strip()
    if not _BUCKET_RE.match(name):
        raise ValueError(
            f"{name!r} is not a valid bucket name (3-63 characters: lowercase letters, digits, "
            "dots and hyphens, starting and ending with a letter or digit)"
        )
    if ".." in name or ".-" in name or "-." in name:
        raise ValueError(f"{name!r} is not a valid bucket name (no '..', '.-' or '-.')")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise ValueError(f"{name!r} is not a valid bucket name (it looks like an IP address)")
    return name


def _parse_endpoint(raw: str) -> str:
    url = raw.strip().rstrip("/")
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {raw!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError(f"has a malformed port: {raw!r}") from None
    return url


def _parse_prefix(raw: str) -> str:
    prefix = raw.strip().strip("/")
    if any(part in ("..", ".") for part in prefix.split("/")):
        raise ValueError(f"must not contain '.' or '..' segments, got {raw!r}")
    return prefix


def folder_problem(path: str) -> str | None:
    """Why ``path`` cannot be a folder of a run's own on a host, or None: one rule for REMOTE_DIR and for the
    folder of a ``host:port/dir`` address. A control character (a newline or NUL would end up in commands and
    files), a relative path, ``..`` (``/workspace/../etc`` is /etc) and the root itself are refused."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        return "holds a control character; give a plain absolute folder"
    if not path.startswith("/") or ".." in path.split("/"):
        return "must be an absolute path without '..', e.g. /workspace/run"
    if normal_folder(path) == "/":
        return "is the root folder; give a folder of its own, e.g. /workspace/run"
    return None


def normal_folder(path: str) -> str:
    """``/dir//sub/`` as ``/dir/sub`` (normpath keeps a leading ``//``)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _parse_remote_dir(raw: str) -> str:
    path = raw.strip()
    problem = folder_problem(path)
    if problem:
        raise ValueError(f"{problem} (got {path!r})")
    return normal_folder(path)


def _parse_str(raw: str) -> str:
    return raw.strip()


def _parse_secret(raw: str) -> Secret:
    return Secret(raw.strip())


def _parse_path(raw: str) -> str:
    return os.path.expanduser(raw.strip())


def _parse_dollars(raw: str) -> float:
    try:
        value = float(raw.strip().lstrip("$"))
    except ValueError:
        raise ValueError(f"must be a price in dollars such as 0.80, got {raw!r}") from None
    if not 0 < value < 1000:
        raise ValueError(f"must be more than 0 and less than 1000, got {raw!r}")
    return value


def _parse_hours(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"must be a number of hours such as 12 or 0.5, got {raw!r}") from None
    if not 0 < value <= 24 * 365:
        raise ValueError(f"must be more than 0 and at most a year (8760), got {raw!r}")
    return value


_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _parse_run_id(raw: str) -> str:
    value = raw.strip()
    if not _RUN_ID_RE.match(value) or value.endswith(".json"):
        raise ValueError(f"must be letters, digits, '.', '_' and '-' (up to 128), got {raw!r}")
    return value


def _parse_host_prices(raw: str) -> str:
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        host, sep, price = part.rpartition("=")
        if sep and not host.strip():
            raise ValueError(f"has {part!r} without a host name; write host1=1.20,host2=0.80 or 1.20")
        try:
            _parse_dollars(price)
        except ValueError:
            raise ValueError(f"has {part!r}; write dollars per hour as 1.20, or host1=1.20,host2=0.80") from None
    return raw.strip()


# --------------------------------------------------------------------------- the keys


def setting(
    key: str,
    help: str,
    example: str,
    *,
    default: Any = None,
    parse: Callable[[str], Any] = _parse_str,
    secret: bool = False,
    group: str = "s3",
) -> Any:
    """Declare one setting: its `.env` key, one line of help, a safe example, how to parse it."""
    meta = {"key": key, "help": help, "example": example, "parse": parse, "secret": secret, "group": group}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """The effective settings. Build it with :func:`load_settings`; every field is already parsed."""

    aws_access_key_id: Secret | None = setting(
        "AWS_ACCESS_KEY_ID", "Access key of the S3 bucket's account.", "your-access-key-id",
        parse=_parse_secret, secret=True)
    aws_secret_access_key: Secret | None = setting(
        "AWS_SECRET_ACCESS_KEY", "Secret key that goes with the access key.", "change-me",
        parse=_parse_secret, secret=True)
    aws_default_region: str = setting(
        "AWS_DEFAULT_REGION", "Region of the bucket (Timeweb: ru-1).", "us-east-1", default="us-east-1")
    aws_endpoint_url: str | None = setting(
        "AWS_ENDPOINT_URL", "S3-compatible endpoint; leave empty for AWS itself.",
        "https://s3.timeweb.cloud", parse=_parse_endpoint)
    s3_bucket: str | None = setting(
        "S3_BUCKET", "Bucket that holds checkpoints, logs, datasets and images.", "my-training-bucket",
        parse=parse_bucket)
    s3_prefix: str = setting(
        "S3_PREFIX", "Folder inside the bucket for this project (may be empty).", "piper", default="",
        parse=_parse_prefix)
    s3_addressing_style: str = setting(
        "S3_ADDRESSING_STYLE", "S3 addressing: path (MinIO and most providers), virtual or auto.",
        "path", default="path", parse=_parse_choice(ADDRESSING_STYLES))
    aws_max_attempts: int = setting(
        "AWS_MAX_ATTEMPTS", "How many times one S3 call is tried before it fails (fab's tasks also stop retrying "
        "a call once its time is up, and say so on stderr).", "10", default=10,
        parse=_parse_int(1, 100))
    aws_retry_mode: str = setting(
        "AWS_RETRY_MODE", "botocore retry mode: standard, adaptive or legacy.", "standard",
        default="standard", parse=_parse_choice(RETRY_MODES))
    connect_timeout_seconds: int = setting(
        "CONNECT_TIMEOUT_SECONDS", "Seconds the S3 endpoint, an SSH host or RunPod's API gets to accept a connection "
        "and answer before a task names it as unreachable (fab checks each one before the real work).", "5",
        default=5, parse=_parse_int(1, 120))
    aws_s3_max_concurrency: int = setting(
        "AWS_S3_MAX_CONCURRENCY", "Parallel S3 requests for one transfer.", "10", default=10,
        parse=_parse_int(1, 256))
    s3_multipart_threshold_mb: int = setting(
        "S3_MULTIPART_THRESHOLD_MB", "Files larger than this many MB go up in parallel parts.", "16", default=16,
        parse=_parse_int(5, 5120))
    s3_multipart_chunksize_mb: int = setting(
        "S3_MULTIPART_CHUNKSIZE_MB", "Size of one multipart part in MB (S3 allows 5 to 5120).", "16", default=16,
        parse=_parse_int(5, 5120))
    enable_s3_sync: bool = setting(
        "ENABLE_S3_SYNC", "1 uploads checkpoints and logs to S3 while training.", "1", default=False,
        parse=_parse_bool, group="training")
    checkpoint: str = setting(
        "CHECKPOINT", "Resume from: s3 (latest in the bucket), a local path, an s3:// URI, or empty.",
        "s3", default="", group="training")
    batch_size: int | None = setting(
        "BATCH_SIZE", "Training batch size.", "32", parse=_parse_int(1), group="training")
    precision: str | None = setting(
        "PRECISION", "Lightning precision: 32, 16-mixed, bf16-mixed ...", "16-mixed",
        parse=_parse_choice(PRECISIONS), group="training")
    max_epochs: int | None = setting(
        "MAX_EPOCHS", "Training epochs (the demo model's default is 2).", "100", parse=_parse_int(1),
        group="training")
    s3_sync_flush_timeout: int = setting(
        "S3_SYNC_FLUSH_TIMEOUT", "Seconds pending uploads get to finish when training stops (keep it "
        "below the compose stop grace period).", "60", default=60, parse=_parse_int(0, 3600), group="training")
    train_command: str = setting(
        "TRAIN_COMMAND", "Training command the image runs (default: the demo model).",
        "python -m piper.train fit --config /workspace/data/config.yaml", default="", group="training")
    num_nodes: int = setting(
        "NUM_NODES", "Hosts one run trains across (torch.distributed); each host gets its NODE_RANK.", "1",
        default=1, parse=_parse_int(1, 1024), group="training")
    master_addr: str | None = setting(
        "MASTER_ADDR", "Address of rank 0 as the other hosts reach it (default: rank 0's SSH address).",
        "10.0.0.2", group="training")
    master_port: int = setting(
        "MASTER_PORT", "Rendezvous port on rank 0 for multi-node training.", "29500", default=29500,
        parse=_parse_int(1, 65535), group="training")
    devices: str = setting(
        "DEVICES", "Devices per node for Lightning (deploy sets the GPU count the probe found).", "8",
        default="", group="training")
    image: str = setting(
        "IMAGE", "Training image (name:tag) in the local Docker engine.", "gpu-deploy-train:latest",
        default="gpu-deploy-train:latest", group="training")
    # The run ledger (deploy.ledger): which run a deploy continues, and what a host costs.
    run_id: str = setting(
        "RUN_ID", "Run to deploy into (fab runs lists them); empty: continue the newest unfinished run, else a "
        "new one. Training gets it too.", "", default="", parse=_parse_run_id, group="training")
    from_run: str = setting(
        "FROM_RUN", "Run whose newest checkpoint training may continue from (fab runs lists them); empty: with "
        "RUN_ID set, resume skips other runs' checkpoints.", "", default="", parse=_parse_run_id, group="training")
    host_price_per_hour: str = setting(
        "HOST_PRICE_PER_HOUR", "Dollars per hour a GPU host costs, for the run's cost: 1.20 for every host, or "
        "per host as host1=1.20,host2=0.80 (pods report their own price).", "1.20", default="",
        parse=_parse_host_prices, group="host")
    runpod_host: str | None = setting(
        "RUNPOD_HOST", "SSH address of the GPU host (public IP of the pod's exposed TCP port).",
        "203.0.113.10", group="host")
    runpod_port: int = setting(
        "RUNPOD_PORT", "SSH port of the GPU host.", "22", default=22, parse=_parse_int(1, 65535),
        group="host")
    runpod_user: str = setting(
        "RUNPOD_USER", "SSH user on the GPU host.", "root", default="root", group="host")
    runpod_ssh_key: str | None = setting(
        "RUNPOD_SSH_KEY", "Private key file for SSH (default: your SSH agent and ~/.ssh keys).",
        "~/.ssh/id_ed25519", parse=_parse_path, group="host")
    remote_dir: str = setting(
        "REMOTE_DIR", "Working directory on the GPU host.", "/workspace/train",
        default="/workspace/train", parse=_parse_remote_dir, group="host")
    ssh_known_hosts: str = setting(
        "SSH_KNOWN_HOSTS", "known_hosts file: new host keys are recorded here, changed ones refused.",
        "~/.ssh/known_hosts", default="~/.ssh/known_hosts", parse=_parse_path, group="host")
    ssh_strict_host_keys: bool = setting(
        "SSH_STRICT_HOST_KEYS", "1 refuses hosts whose key is not in known_hosts yet.", "0",
        default=False, parse=_parse_bool, group="host")
    ssh_connect_timeout: int = setting(
        "SSH_CONNECT_TIMEOUT", "Seconds to wait for an SSH host before giving up.", "10", default=10,
        parse=_parse_int(1, 600), group="host")
    runtime: str = setting(
        "RUNTIME", "How the host runs training: compose (Docker), native (a supervised process in a virtualenv, "
        "for hosts without Docker such as RunPod pods) or auto (compose when the host has Docker and Compose).",
        "auto", default="auto", parse=_parse_choice(("auto", "compose", "native")), group="host")
    native_python: str = setting(
        "NATIVE_PYTHON", "Native runtime: the host's interpreter whose packages (the image's torch) the run's "
        "virtualenv sees.", "python3", default="python3", group="host")
    dataset: str | None = setting(
        "DATASET", "Dataset to stage on the host: a name under datasets/ in the bucket, or a local folder.",
        "ljspeech", group="deploy")
    data_dir: str | None = setting(
        "DATA_DIR", "Where the dataset lands on the host (default: REMOTE_DIR/data); mounted read-only.",
        "/workspace/data", parse=_parse_remote_dir, group="deploy")
    ship_env_include: str = setting(
        "SHIP_ENV_INCLUDE", "More keys of the .env file to ship to the host's .env (glob patterns, comma-separated; "
        "* ships every key). Shipped without listing: the S3, training and deploy settings and "
        f"{', '.join(TRAINING_SERVICE_KEYS)}; every other key stays on the laptop.", "MYAPP_*,SENTRY_DSN",
        default="", group="deploy")
    ship_env_exclude: str = setting(
        "SHIP_ENV_EXCLUDE", "Keys never shipped (glob patterns; wins over the include list), besides RUNPOD_*, "
        "SSH_*, REMOTE_DIR, ENV_FILE and SHIP_ENV_*, which never leave the laptop.",
        "LOCAL_*", default="", group="deploy")
    package_index: str = setting(
        "PACKAGE_INDEX", "Native runtime: never forbids the package index after the first deploy of a requirement "
        "set: packages come only from the bucket's wheel store (wheels/), which that first deploy fills, and a deploy "
        "that would need the index stops in its plan. Unset: the index serves what the store lacks.", "", default="",
        parse=_parse_choice(("never",)), group="deploy")
    # The training project (deploy.project): whose code and requirements training runs; operator-side.
    train_project: str = setting(
        "TRAIN_PROJECT", "Folder of the training project whose code runs on the host and whose requirements.txt "
        "(or pyproject.toml) the image and virtualenv install (default: the folder fab runs in).", "../my-trainer",
        default=".", parse=_parse_path, group="project")
    build_command: str = setting(
        "BUILD_COMMAND", "Shell line fab build-ext runs in REMOTE_DIR where the training runs, such as make -C native "
        "(default: bash ./build_*.sh for each such script at the project's root, then python setup.py build_ext "
        "--inplace when it has a setup.py).", "", default="", group="project")
    base_image: str = setting(
        "BASE_IMAGE", "Image fab image-build installs the dependencies on; its CUDA torch is kept.",
        "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", default="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
        group="project")

    runpod_api_key: Secret | None = setting(
        "RUNPOD_API_KEY", "RunPod API key for the pods tasks (Settings > API Keys); stays on the laptop.",
        "your-runpod-api-key", parse=_parse_secret, secret=True, group="pods")
    pod_gpu_types: str = setting(
        "POD_GPU_TYPES", "GPU types to try in order, comma-separated (fab pods.gpus lists them).",
        "NVIDIA L40S,NVIDIA RTX A6000", default="NVIDIA L40S,NVIDIA RTX A6000", group="pods")
    pod_gpu_count: int = setting(
        "POD_GPU_COUNT", "GPUs per pod.", "1", default=1, parse=_parse_int(1, 16), group="pods")
    pod_cloud_type: str = setting(
        "POD_CLOUD_TYPE", "RunPod cloud: SECURE, COMMUNITY (cheaper, less reliable) or ALL.", "ALL",
        default="ALL", parse=_parse_choice(("ALL", "SECURE", "COMMUNITY")), group="pods")
    pod_data_centers: str = setting(
        "POD_DATA_CENTERS", "Data centers to try in order, comma-separated, such as EU-RO-1 (empty: any).", "", default="",
        group="pods")
    pod_container_disk_gb: int = setting(
        "POD_CONTAINER_DISK_GB", "Container disk in GB (lost when the pod stops).", "20", default=20,
        parse=_parse_int(1, 4096), group="pods")
    pod_volume_gb: int = setting(
        "POD_VOLUME_GB", "Volume at /workspace in GB (kept while the pod exists, billed even when stopped).",
        "50", default=50, parse=_parse_int(0, 65536), group="pods")
    pod_image: str = setting(
        "POD_IMAGE", "Image the pod runs; it must start sshd with the PUBLIC_KEY env authorised (RunPod's do).",
        "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
        default="runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04", group="pods")
    pod_public_key: str | None = setting(
        "POD_PUBLIC_KEY", "SSH public key file the pod authorises (default: RUNPOD_SSH_KEY + .pub).",
        "~/.ssh/id_ed25519.pub", parse=_parse_path, group="pods")
    max_price_per_hour: float | None = setting(
        "MAX_PRICE_PER_HOUR", "Refuse GPU types whose pod costs more dollars per hour than this.", "1.50",
        parse=_parse_dollars, group="pods")
    # Managed runs (fab train): the watcher's guardrails. Operator-side like the pod settings.
    max_restarts: int = setting(
        "MAX_RESTARTS", "fab train: redeploys after the training failed (its supervisor gave up) before the "
        "watcher stops the run.", "3", default=3, parse=_parse_int(0, 100), group="pods")
    on_success: str = setting(
        "ON_SUCCESS", "fab train: what happens to the pod once training exited 0 and results are synced: "
        "terminate (nothing bills) or stop (the volume is kept and billed).", "terminate", default="terminate",
        parse=_parse_choice(("terminate", "stop")), group="pods")
    max_hours: float | None = setting(
        "MAX_HOURS", "fab train: stop the run gracefully after this many hours (warns at 80%).", "24",
        parse=_parse_hours, group="pods")
    max_spend: float | None = setting(
        "MAX_SPEND", "fab train: stop the run gracefully once it has cost this many dollars (warns at 80%).", "50",
        parse=_parse_dollars, group="pods")
    idle_minutes: int = setting(
        "IDLE_MINUTES", "fab train: GPUs below IDLE_GPU_PERCENT with no new step for this long: warn, and stop "
        "after as long again (0: never).", "30", default=30, parse=_parse_int(0, 10080), group="pods")
    idle_gpu_percent: int = setting(
        "IDLE_GPU_PERCENT", "fab train: GPU utilisation under this percent counts as idle.", "5", default=5,
        parse=_parse_int(0, 100), group="pods")
    lost_after_seconds: int = setting(
        "LOST_AFTER_SECONDS", "fab train: a pod RUNNING without a runtime, or unreachable over SSH, this long "
        "is lost and replaced (an EXITED or vanished pod at once).", "30", default=30,
        parse=_parse_int(5, 3600), group="pods")

    env_file: str = field(default=DEFAULT_ENV_FILE, compare=False)
    env_file_found: bool = field(default=False, compare=False)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    flag_names: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """The task flag that set a key (``S3_BUCKET``: ``--bucket``), for keys that came from a flag."""

    # ----------------------------------------------------------------- queries

    @property
    def env_file_path(self) -> Path:
        return Path(self.env_file)

    def source(self, key: str) -> str:
        """Where ``key``'s value came from: ``flag``, ``environment``, ``.env`` or ``default``."""
        return self.sources.get(key, "default")

    def origin(self, key: str) -> str:
        """Where ``key``'s value came from, for a sentence that tells the user to change it.

        >>> load_settings(overrides={"S3_BUCKET": "b"}, flag_names={"S3_BUCKET": "--bucket"}).origin("S3_BUCKET")
        'the --bucket flag'

        Also ``'the environment'``, ``'the .env file /home/me/project/.env'`` and ``'the default'``.
        """
        source = self.source(key)
        if source == "flag":
            return f"the {self.flag_names[key]} flag" if key in self.flag_names else "a task flag"
        if source in ("environment", "default"):
            return f"the {source}"
        return f"the .env file {os.path.abspath(source)}"

    def check(self, key: str) -> str:
        """``KEY (from <origin>)``: what to check when its value does not work, and where it was set."""
        return f"{key} (from {self.origin(key)})"

    def value(self, key: str) -> Any:
        """The parsed value of a setting by its `.env` key."""
        return getattr(self, _FIELD_BY_KEY[key].name)

    def missing(self, *keys: str) -> list[str]:
        """The keys in ``keys`` that have no value, in order."""
        for key in keys:
            if key not in _FIELD_BY_KEY:
                raise KeyError(f"unknown setting {key}")
        return [key for key in keys if not self.value(key)]

    def require(self, *keys: str, also: Iterable[str] = ()) -> None:
        """Fail with one sentence naming every key in ``keys`` that has no value, and the keys in ``also``
        (ones the caller found missing by its own rule, such as RUNPOD_HOST without --hosts or a pod).

        Example: ``settings.require("S3_BUCKET", "AWS_ACCESS_KEY_ID")`` raises
        ``ConfigError("Missing settings: S3_BUCKET, AWS_ACCESS_KEY_ID (no .env file at .env) ...")``.
        """
        missing = list(dict.fromkeys([*self.missing(*keys), *also]))
        if missing:
            raise ConfigError(missing_sentence(missing, self.env_file, self.env_file_found))

    def describe(self) -> list[tuple[str, str, str]]:
        """Rows of (key, shown value, source) for every setting; secrets are masked."""
        rows = []
        for spec in SETTING_FIELDS:
            key = spec.metadata["key"]
            rows.append((key, _show(getattr(self, spec.name)), self.source(key)))
        return rows


MISSING_HINTS = {
    "RUNPOD_HOST": "RUNPOD_HOST: or name the host with --hosts or fab -H, or create a pod with fab pods.up",
    "RUNPOD_API_KEY": "RUNPOD_API_KEY: create one in RunPod's console under Settings > API Keys",
}
"""What else to say about a missing key, beyond where settings come from."""


def missing_sentence(missing: Iterable[str], env_file: str = DEFAULT_ENV_FILE, env_file_found: bool = False) -> str:
    """The one sentence for missing settings, wherever they are found missing (every task, the pod API)."""
    keys = list(missing)
    where = f"read {env_file}" if env_file_found else f"no .env file at {env_file}"
    hints = [MISSING_HINTS[key] for key in keys if key in MISSING_HINTS]
    return (f"Missing settings: {', '.join(keys)} ({where}); set them in the .env file, the environment or with "
            "flags" + (f" ({'; '.join(hints)})" if hints else "") + ".")


SETTING_FIELDS: tuple[dataclasses.Field[Any], ...] = tuple(
    f for f in dataclasses.fields(Settings) if "key" in f.metadata
)
_FIELD_BY_KEY = {f.metadata["key"]: f for f in SETTING_FIELDS}
SETTING_KEYS: tuple[str, ...] = tuple(_FIELD_BY_KEY)
SECRET_KEYS: frozenset[str] = frozenset(k for k, f in _FIELD_BY_KEY.items() if f.metadata["secret"])


def _show(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)  # a Secret masks itself


# --------------------------------------------------------------------------- loading


def resolve_env_file(env_file: str | os.PathLike[str] | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The `.env` path to read, and whether it was named explicitly (flag or ``ENV_FILE``)."""
    environ = os.environ if environ is None else environ
    if env_file:
        return Path(env_file).expanduser(), True
    if environ.get(ENV_FILE_VARIABLE):
        return Path(environ[ENV_FILE_VARIABLE]).expanduser(), True
    return Path(DEFAULT_ENV_FILE), False


def read_env_file(path: Path) -> dict[str, str]:
    """The keys of a `.env` file; keys written without a value are left out.

    A file that is not UTF-8 or cannot be read is a :class:`ConfigError` naming it, not a traceback.
    """
    try:
        values = dotenv_values(path, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"The .env file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"The .env file {path} cannot be read ({exc.strerror or exc}); check its permissions.") \
            from None
    return {k: v for k, v in values.items() if v is not None}


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings`: ``overrides`` (task flags) > ``environ`` > `.env` > defaults.

    ``overrides`` maps `.env` keys to flag values; ``None`` means the flag was not given.
    ``flag_names`` maps keys to the flags that set them (``S3_BUCKET``: ``--bucket``), for
    :meth:`Settings.origin`. Every malformed value is reported at once, by key and source, in one
    :class:`ConfigError`.
    """
    environ = os.environ if environ is None else environ
    path, explicit = resolve_env_file(env_file, environ)
    found = path.is_file()
    if explicit and not found:
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"The .env file {path} {what}; fix the --env-file flag or {ENV_FILE_VARIABLE}.")
    dotenv = read_env_file(path) if found else {}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(flags) - set(_FIELD_BY_KEY))
    if unknown:
        raise KeyError(f"unknown settings in overrides: {', '.join(unknown)}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for spec in SETTING_FIELDS:
        key = spec.metadata["key"]
        for layer, source in ((flags, "flag"), (environ, "environment"), (dotenv, str(path))):
            if key in layer:
                raw = layer[key]
                sources[key] = source
                break
        else:
            continue
        if isinstance(raw, str):
            if raw.strip() == "":
                continue  # an empty value means "unset" (and stops lower layers)
            try:
                values[spec.name] = spec.metadata["parse"](raw)
            except ValueError as exc:
                problems.append(f"{key} from {source} {exc}")
        else:
            values[spec.name] = Secret(str(raw)) if spec.metadata["secret"] and not isinstance(raw, Secret) else raw
    if problems:
        raise ConfigError("Invalid settings: " + "; ".join(problems) + ".")
    named = {k: v for k, v in (flag_names or {}).items() if sources.get(k) == "flag"}
    return Settings(**values, env_file=str(path), env_file_found=found, sources=sources, flag_names=named)


def env_example() -> str:
    """The text of `.env.example`: every key with its help line and a safe example value."""
    lines = ["# Settings for gpu-deploy. Copy to .env and fill in; .env is never committed.", ""]
    group = None
    titles = {"s3": "S3 bucket", "training": "Training", "host": "GPU host (SSH)", "deploy": "Deploy",
              "project": "Training project (your trainer)", "pods": "RunPod pods (fab pods.*)"}
    for spec in SETTING_FIELDS:
        meta = spec.metadata
        if meta["group"] != group:
            group = meta["group"]
            lines += ([""] if len(lines) > 2 else []) + [f"# --- {titles[group]}"]
        lines.append(f"# {meta['help']}")
        lines.append(f"{meta['key']}={meta['example']}")
    return "\n".join(lines) + "\n"


def settings_table() -> str:
    """The README's settings table (Markdown), generated so it cannot drift from the code."""
    rows = ["| key | meaning | default |", "| --- | --- | --- |"]
    for spec in SETTING_FIELDS:
        meta = spec.metadata
        default = "" if spec.default in (None, "") else _show(spec.default)
        secret = " (secret)" if meta["secret"] else ""
        rows.append(f"| `{meta['key']}` | {meta['help']}{secret} | {f'`{default}`' if default else ''} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m deploy.settings > .env.example; python -m deploy.settings table
    import sys

    print(settings_table() if sys.argv[1:] == ["table"] else env_example(), end="")
