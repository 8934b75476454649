"""`fab s3.*`: work with the bucket by hand: checkpoints, logs, datasets, and a permission check.

Every task that changes something plans first (what would move, what is already in place) and
takes ``--dry-run`` to stop there. Directory transfers are incremental; a second run moves nothing.
"""

from __future__ import annotations

import json as jsonlib
import os
import time
from datetime import timedelta
from pathlib import Path

from invoke import Collection, task
from rich.filesize import decimal

from deploy.storage.checkpoints import (
    CHECKPOINT_SUFFIX,
    checkpoint_metadata,
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    list_log_versions,
    metric_names,
    parse_checkpoint_name,
)
from deploy.errors import ConfigError, StorageError
from deploy.reach import Gap
from deploy.storage.conditions import ConditionalWrites
from deploy.storage.permissions import check_bucket
from deploy.storage import CHECKPOINTS, DATASETS, LOGS, Storage, safe_relative
from deploy.storage.scan import scan_local
from deploy.storage.uploads import abort_uploads as abort_multipart_uploads
from deploy.storage.uploads import stale_uploads
from deploy.storage.sync import (
    SyncCache,
    SyncPlan,
    cache_for,
    execute,
    plan_download,
    plan_download_file,
    plan_upload,
    plan_upload_file,
)
from tasks._boundary import BUCKET_FLAGS, DRY_RUN_HELP, JSON_HELP, boundary, settings_from_flags
from tasks._flags import duration, duration_help, say_duration, whole
from tasks._progress import RichTransferProgress
from tasks._reach import reach, unchecked
from tasks._table import make_table, print_table

COMMON_HELP = BUCKET_FLAGS


def _help(**extra: str) -> dict[str, str]:
    return {**COMMON_HELP, **extra}


def bucket_of(env_file: str | None, bucket: str | None, prefix: str | None, dry_run: bool = False,
              signed: bool = True) -> tuple[Storage, list[Gap]]:
    """The bucket of the flags and settings, checked to answer as S3 (``signed``: with the keys) before any
    work; a dry run gets the gaps back instead of an error (:func:`tasks._reach.reach`)."""
    settings = settings_from_flags(env_file=env_file, S3_BUCKET=bucket, S3_PREFIX=prefix)
    storage = Storage.from_settings(settings, interactive=True)
    return storage, reach(settings, storage=storage, signed=signed, collect=dry_run)


def _storage(env_file: str | None, bucket: str | None, prefix: str | None) -> Storage:
    return bucket_of(env_file, bucket, prefix)[0]


def incomplete(gaps: list[Gap], *plan: str) -> None:
    """A dry run that could not reach the bucket: the plan it can print, what it could not check, exit 1."""
    for line in plan:
        print(line)
    unchecked(gaps)


def _carry_out(storage: Storage, plan: SyncPlan, dry_run: bool, cache: SyncCache | None = None,
               started: float | None = None) -> None:
    """Print the plan; stop there on --dry-run; else transfer with a progress bar and summarise."""
    if dry_run or not plan.transfers:
        took = time.monotonic() - started if started is not None and not plan.transfers else None
        print(plan.headline(checked_in=took))
        if dry_run:
            for line in plan.lines():
                print(line)
            print("Dry run: nothing was changed.")
        return
    print(plan.headline())
    with RichTransferProgress() as progress:
        result = execute(storage, plan, observer=progress, cache=cache)
    print(result.summary())


def _upload_folder(env_file: str | None, bucket: str | None, prefix: str | None, path: str, where: tuple[str, ...],
                   dry_run: bool) -> None:
    """Upload a local folder (checked first: it exists) under ``where`` in the prefix, incrementally."""
    found = scan_local(path)
    storage, gaps = bucket_of(env_file, bucket, prefix, dry_run)
    if gaps:
        size = sum(f.size for f in found.values())
        incomplete(gaps, f"would upload {path} ({len(found)} files, {decimal(size)}) to "
                         f"{storage.url(storage.key(*where))}; which the bucket has already: not checked")
    _sync_up(storage, path, storage.key(*where), dry_run)


def _sync_up(storage: Storage, local: str, prefix: str, dry_run: bool) -> None:
    started = time.monotonic()
    cache = cache_for(storage, prefix, local)
    _carry_out(storage, plan_upload(storage, local, prefix, cache=cache), dry_run, cache, started)


def _sync_down(storage: Storage, prefix: str, local: str, dry_run: bool) -> None:
    started = time.monotonic()
    cache = cache_for(storage, prefix, local)
    _carry_out(storage, plan_download(storage, prefix, local, cache=cache), dry_run, cache, started)


def _folder_name(value: str, what: str) -> str:
    """A single folder name (a dataset, a log version): no '/', no '..'."""
    name = value.strip().strip("/")
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"The {what} {value!r} must be one folder name, without '/' or '..'.")
    return safe_relative(name)


# --------------------------------------------------------------------------- checkpoints


@task(auto_shortflags=False, help=_help(json=JSON_HELP))
@boundary
def checkpoints(c, json=False, env_file=None, bucket=None, prefix=None):
    """List checkpoints in the bucket, oldest to newest by global step."""
    storage = _storage(env_file, bucket, prefix)
    found = list_checkpoints(storage)
    if json:
        print(jsonlib.dumps([cp.to_dict() for cp in found], indent=2))
        return
    if not found:
        print(f"No checkpoints under {storage.url(storage.key(CHECKPOINTS))}.")
        return
    metrics = metric_names(found) or ["val_loss"]  # the metrics the names carry: val_loss, val_mel ...
    table = make_table(("name", "epoch", "step", *metrics, "size", "uploaded"),
                       right=("epoch", "step", *metrics, "size"),
                       title=f"Checkpoints in {storage.url(storage.key(CHECKPOINTS))}")
    for cp in found:
        table.add_row(
            cp.name, "-" if cp.epoch is None else str(cp.epoch),
            "-" if cp.step is None else str(cp.step) + ("" if cp.step_source == "metadata" else "*"),
            *("-" if cp.metrics.get(m) is None else f"{cp.metrics[m]:g}" for m in metrics),
            decimal(cp.size) + (f" != {decimal(cp.recorded_size)} recorded!" if cp.size_mismatch else ""),
            cp.uploaded.strftime("%Y-%m-%d %H:%M:%S") if cp.uploaded else "-")
    print_table(table)
    named_only = any(cp.step is not None and cp.step_source != "metadata" for cp in found)  # the rows marked *
    print(f"{len(found)} checkpoints; latest: {found[-1].name}"
          + (" (* step read from the file name)." if named_only else "."))
    for cp in found:
        if cp.size_mismatch:
            print(f"{cp.name} is {cp.size} bytes but was uploaded as {cp.recorded_size}: it is damaged or was "
                  "replaced, and resuming skips it.")


@task(auto_shortflags=False,
      help=_help(path="The .ckpt file to upload.",
                 name="Name in the bucket (default: the file's name).",
                 epoch="Epoch to record (default: from epoch=N in the name).",
                 step="Global step to record (default: from step=N in the name).",
                 dry_run=DRY_RUN_HELP))
@boundary
def upload_checkpoint(c, path, name=None, epoch=None, step=None, dry_run=False, env_file=None, bucket=None,
                      prefix=None):
    """Upload a checkpoint file to checkpoints/, with its epoch and global step as metadata."""
    name = _folder_name(name or os.path.basename(path), "checkpoint name")
    if not name.endswith(CHECKPOINT_SUFFIX):
        raise ConfigError(f"The checkpoint name {name!r} must end with {CHECKPOINT_SUFFIX}.")
    parsed = parse_checkpoint_name(name)
    epoch = whole(epoch, "--epoch") if epoch is not None else parsed.epoch
    step = whole(step, "--step") if step is not None else parsed.step
    metadata = checkpoint_metadata(epoch, step, parsed.val_loss) if step is not None else {}
    if not Path(path).is_file():
        raise StorageError(f"The local file {path} does not exist; check the path.")
    storage, gaps = bucket_of(env_file, bucket, prefix, dry_run)
    if gaps:
        incomplete(gaps, f"would upload {path} ({decimal(Path(path).stat().st_size)}) to "
                         f"{storage.url(storage.key(CHECKPOINTS, name))}; whether the bucket holds it already: "
                         "not checked")
    plan = plan_upload_file(storage, path, storage.key(CHECKPOINTS, name), metadata)
    _carry_out(storage, plan, dry_run)


@task(auto_shortflags=False,
      help=_help(name="Checkpoint to download (see `fab s3.checkpoints`).",
                 latest="Download the checkpoint with the highest global step.",
                 dest="Directory to put it in (default: ./checkpoints).",
                 dry_run=DRY_RUN_HELP))
@boundary
def download_checkpoint(c, name=None, latest=False, dest="checkpoints", dry_run=False, env_file=None,
                        bucket=None, prefix=None):
    """Download a checkpoint by name, or the latest one (highest global step)."""
    if bool(name) == bool(latest):
        raise ConfigError("Give exactly one of --name NAME or --latest.")
    storage, gaps = bucket_of(env_file, bucket, prefix, dry_run)
    if gaps:
        incomplete(gaps, f"would download {'the latest checkpoint' if latest else name} from "
                         f"{storage.url(storage.key(CHECKPOINTS))} into {dest}: not checked")
    if latest:
        chosen = latest_checkpoint(storage)
        if chosen is None:
            raise StorageError(f"There are no checkpoints under {storage.url(storage.key(CHECKPOINTS))}.")
        print(f"Latest checkpoint: {chosen.name} (step {chosen.step if chosen.step is not None else 'unknown'}).")
    else:
        chosen = find_checkpoint(storage, _folder_name(name, "checkpoint name"))
        if chosen is None:
            raise StorageError(f"No checkpoint {name!r} under {storage.url(storage.key(CHECKPOINTS))}; "
                               "`fab s3.checkpoints` lists them.")
    plan = plan_download_file(storage, chosen.key, Path(dest) / chosen.name)
    _carry_out(storage, plan, dry_run)


# --------------------------------------------------------------------------- logs and datasets


@task(auto_shortflags=False,
      help=_help(path="Local logs directory holding version_N/ folders (default: ./logs).",
                 dry_run=DRY_RUN_HELP))
@boundary
def upload_logs(c, path="logs", dry_run=False, env_file=None, bucket=None, prefix=None):
    """Upload a logs directory to logs/ (incremental: unchanged files are skipped)."""
    _upload_folder(env_file, bucket, prefix, path, (LOGS,), dry_run)


@task(auto_shortflags=False,
      help=_help(dest="Local directory to download into (default: ./logs).",
                 version="One version to download: N, version_N or latest (default: all).",
                 dry_run=DRY_RUN_HELP))
@boundary
def download_logs(c, dest="logs", version=None, dry_run=False, env_file=None, bucket=None, prefix=None):
    """Download logs/ (or one version_N, or the latest) for TensorBoard; incremental."""
    storage, gaps = bucket_of(env_file, bucket, prefix, dry_run)
    if gaps:
        incomplete(gaps, f"would download {storage.url(storage.key(LOGS))} ({version or 'every version'}) into "
                         f"{dest}: not checked")
    if version is None:
        _sync_down(storage, storage.key(LOGS), dest, dry_run)
        return
    if version == "latest":
        versions = list_log_versions(storage)
        if not versions:
            raise StorageError(f"There are no log versions under {storage.url(storage.key(LOGS))}.")
        version = versions[-1]
        print(f"Latest log version: {version}.")
    elif str(version).isdigit():
        version = f"version_{version}"
    version = _folder_name(str(version), "log version")
    _sync_down(storage, storage.key(LOGS, version), str(Path(dest) / version), dry_run)


@task(auto_shortflags=False,
      help=_help(path="Local dataset directory (config.json, dataset.jsonl or metadata.csv, wavs/).",
                 name="Dataset name in the bucket (default: the directory's name).",
                 dry_run=DRY_RUN_HELP))
@boundary
def upload_dataset(c, path, name=None, dry_run=False, env_file=None, bucket=None, prefix=None):
    """Upload a dataset directory to datasets/<name>/ (incremental)."""
    name = _folder_name(name or Path(path).resolve().name, "dataset name")
    _upload_folder(env_file, bucket, prefix, path, (DATASETS, name), dry_run)


@task(auto_shortflags=False,
      help=_help(name="Dataset name in the bucket (the folder under datasets/).",
                 dest="Local directory (default: ./datasets/<name>).",
                 dry_run=DRY_RUN_HELP))
@boundary
def download_dataset(c, name, dest=None, dry_run=False, env_file=None, bucket=None, prefix=None):
    """Download datasets/<name>/ into a local directory (incremental, verified)."""
    name = _folder_name(name, "dataset name")
    storage, gaps = bucket_of(env_file, bucket, prefix, dry_run)
    if gaps:
        incomplete(gaps, f"would download {storage.url(storage.key(DATASETS, name))} into "
                         f"{dest or Path('datasets') / name}: not checked")
    _sync_down(storage, storage.key(DATASETS, name), dest or str(Path("datasets") / name), dry_run)


# --------------------------------------------------------------------------- check


WITHOUT_CONDITIONS = "fab train then allows one watcher per run and holds a lease object with an expiry"
"""What a store without (or with unproven) conditional writes means for a managed run."""


def conditional_writes_line(writes: ConditionalWrites | None) -> str:
    """The check's line about conditional writes; informational: a store without them is still usable."""
    if writes is None:
        return "conditional writes: not checked (the probe object could not be written)"
    return writes.describe() if writes.honoured else f"{writes.describe()}; {WITHOUT_CONDITIONS}"


@task(auto_shortflags=False, help=_help(json=JSON_HELP))
@boundary
def check(c, json=False, env_file=None, bucket=None, prefix=None):
    """Check endpoint, credentials, every permission the project needs, and conditional writes (probe objects).

    The conditional-writes line is informational: a store that ignores or refuses ``If-Match`` is still
    usable (fab train then fences the watcher with a lease); only a missing permission fails the check.
    """
    storage, _ = bucket_of(env_file, bucket, prefix, signed=False)  # the probe itself tells what the keys may do
    report = check_bucket(storage)
    if json:
        writes = report.conditional_writes
        print(jsonlib.dumps({"url": report.url, "endpoint": report.endpoint, "ok": report.ok,
                             "missing": report.missing,
                             "steps": [{"check": s.name, "permission": s.permission, "ok": s.ok, "detail": s.detail}
                                       for s in report.steps],
                             "conditional_writes": None if writes is None else {
                                 "honoured": writes.honoured, "line": conditional_writes_line(writes)}}, indent=2))
        report.raise_for_missing()
        return
    print(f"Checked {report.url} at {report.endpoint}:")
    table = make_table(("check", "permission", "result"))
    for step in report.steps:
        table.add_row(step.name, step.permission, step.result)
    print_table(table)
    print(conditional_writes_line(report.conditional_writes))
    report.raise_for_missing()
    print("All permissions the project needs are in place.")


# --------------------------------------------------------------------------- unfinished uploads


def abort_stale(storage: Storage, prefix: str, older_than: timedelta, age: str, dry_run: bool) -> None:
    """List the multipart uploads under ``prefix`` older than ``older_than``; abort them unless ``dry_run``."""
    uploads = stale_uploads(storage, prefix, older_than)
    if not uploads:
        print(f"No unfinished uploads older than {age} under {storage.url(prefix)}.")
        return
    print(f"{len(uploads)} unfinished upload(s) older than {age} under {storage.url(prefix)}:")
    for upload in uploads:
        print(upload.describe())
    if dry_run:
        print("Dry run: nothing was changed.")
        return
    print(f"Aborted {abort_multipart_uploads(storage, uploads)} upload(s).")


OLDER_THAN_HELP = duration_help("Only uploads started at least this long ago (a transfer may be running)", "1h",
                                unit="h")
"""``--older-than`` of both abort-uploads tasks: one default, and a bare number is hours in both."""


def abort_older_than(c, older_than, dry_run, env_file, bucket, prefix, folder: tuple[str, ...]) -> None:
    """The abort-uploads tasks: stale multipart uploads under ``folder`` of the prefix (all of it when empty)."""
    # Numeric flags default to None so invoke hands over the text and a typo gets one sentence, not a traceback.
    seconds = duration("1h" if older_than is None else older_than, "--older-than", unit="h")
    storage, gaps = bucket_of(env_file, bucket, prefix, dry_run)
    where = storage.url(storage.key(*folder))
    if gaps:
        incomplete(gaps, f"would abort the unfinished uploads older than {say_duration(seconds)} under {where}; "
                         "which there are: not checked")
    abort_stale(storage, storage.key(*folder), timedelta(seconds=seconds), say_duration(seconds), dry_run)


@task(name="abort-uploads", auto_shortflags=False, help=_help(older_than=OLDER_THAN_HELP, dry_run=DRY_RUN_HELP))
@boundary
def abort_uploads(c, older_than=None, dry_run=False, env_file=None, bucket=None, prefix=None):
    """Abort unfinished multipart uploads under the whole S3_PREFIX (their parts are billed until then)."""
    abort_older_than(c, older_than, dry_run, env_file, bucket, prefix, ())


ns = Collection("s3")
for _task in (checkpoints, upload_checkpoint, download_checkpoint, upload_logs, download_logs, upload_dataset,
              download_dataset, check, abort_uploads):
    ns.add_task(_task)
