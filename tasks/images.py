"""`fab image-to-s3`, `fab image-from-s3`, `fab images.*`: Docker images through the bucket."""

from __future__ import annotations

import json as jsonlib
from datetime import timedelta

from invoke import Collection, task
from rich.filesize import decimal

from deploy import images as lib
from deploy.storage import Storage
from deploy.storage.permissions import ensure_reachable
from tasks._boundary import DRY_RUN_HELP, ENV_FILE_HELP, JSON_HELP, boundary, settings_from_flags
from tasks._flags import number
from tasks._progress import RichImageProgress
from tasks._table import make_table, print_table
from tasks.s3 import abort_stale

IMAGE_HELP = "Image name:tag (default: IMAGE from settings)."


def _storage(env_file):
    settings = settings_from_flags(env_file=env_file)
    storage = Storage.from_settings(settings)
    ensure_reachable(settings.aws_endpoint_url)  # seconds, not botocore's minute of retries
    return settings, storage


@task(name="image-to-s3", auto_shortflags=False, help={
    "image": IMAGE_HELP,
    "codec": "Compression: zstd (multi-threaded, default), gzip (compatibility) or none.",
    "format": "layers (default: only the layers the bucket lacks) or archive (one .tar.gz/.tar.zst object).",
    "force": "Upload again even when the bucket already has the image and its layers.",
    "dry_run": DRY_RUN_HELP,
    "env_file": ENV_FILE_HELP,
})
@boundary
def image_to_s3(c, image=None, codec="zstd", format="layers", force=False, dry_run=False, env_file=None):
    """Push a local Docker image to the bucket, moving only the layers it does not have."""
    settings, storage = _storage(env_file)
    client = lib.docker_client()
    plan = lib.plan_push(client, storage, image or settings.image, codec, format, force)
    for line in plan.describe():
        print(line)
    if dry_run or plan.noop:
        return
    result = lib.push(client, storage, plan.ref, codec, format, force, progress=RichImageProgress(), plan=plan)
    print(result.summary())


@task(name="image-build", auto_shortflags=False, help={
    "image": "Image name whose tag becomes deps-<digest> (default: IMAGE); the image is tagged IMAGE too.",
    "base_image": "Image to install the dependencies on (default: BASE_IMAGE); its torch is kept.",
    "project": "The training project folder (default: TRAIN_PROJECT, else the folder fab runs in).",
    "push": "Push the image to the bucket afterwards (only the layers it lacks), as image-to-s3 does.",
    "force": "Build even when the engine has an image for these dependencies.",
    "network": "Docker network for the build's RUN steps (e.g. none on an offline machine).",
    "dry_run": DRY_RUN_HELP,
    "env_file": ENV_FILE_HELP,
})
@boundary
def image_build(c, image=None, base_image=None, project=None, push=False, force=False, network=None, dry_run=False,
                env_file=None):
    """Build the training image: BASE_IMAGE + the train extra + the training project's requirements (no code)."""
    from deploy.images.build import build, plan_build
    from deploy.project import TrainProject

    settings = settings_from_flags(env_file=env_file, IMAGE=image, BASE_IMAGE=base_image, TRAIN_PROJECT=project)
    client = lib.docker_client()
    plan = plan_build(client, TrainProject.from_settings(settings), settings.image, settings.base_image, force)
    for line in plan.describe():
        print(line)
    if dry_run:
        return
    result = build(client, plan, network_mode=network)
    print(result.summary())
    if push:
        storage = Storage.from_settings(settings)
        ensure_reachable(settings.aws_endpoint_url)
        for ref in dict.fromkeys(result.tags):
            pushed = lib.push(client, storage, ref, progress=RichImageProgress())
            print(pushed.summary())


@task(name="image-from-s3", auto_shortflags=False, help={
    "image": IMAGE_HELP,
    "hosts": "Host (user@host:port) to load the image on (default: fab -H, else RUNPOD_HOST, else this machine).",
    "local": "Load into this machine's engine even when RUNPOD_HOST is set.",
    "dry_run": DRY_RUN_HELP,
    "env_file": ENV_FILE_HELP,
})
@boundary
def image_from_s3(c, image=None, hosts=None, local=False, dry_run=False, env_file=None):
    """Load an image from the bucket into a host's engine (or this machine's), fetching only missing layers."""
    settings, storage = _storage(env_file)
    ref = image or settings.image
    runner, where, close = c, "this machine", None
    via_fab = hasattr(c, "host") and hasattr(c, "port")
    if not local and (via_fab or hosts or settings.runpod_host):
        from deploy.hosts import connect
        from tasks._hosts import options, targets

        spec = targets(c, settings, hosts)[0]
        runner = connect(spec, options(settings))
        where, close = str(spec), runner
    try:
        plan = lib.plan_pull(runner, storage, ref, where)
        for line in plan.describe():
            print(line)
        if dry_run or plan.action == "noop":
            return
        result = lib.pull(runner, storage, ref, where, progress=RichImageProgress(), plan=plan)
        print(result.summary())
    finally:
        if close is not None:
            close.close()


@task(name="list", auto_shortflags=False, help={"json": JSON_HELP, "env_file": ENV_FILE_HELP})
@boundary
def list_(c, json=False, env_file=None):
    """The images in the bucket: name, tag, image id, layers, stored size, codec, date, commit."""
    _, storage = _storage(env_file)
    rows = lib.list_images(storage)
    if json:
        print(jsonlib.dumps([row.__dict__ for row in rows], indent=2))
        return
    if not rows:
        print(f"No images under {storage.url(storage.key('docker-images'))}; push one with `fab image-to-s3`.")
        return
    table = make_table(("NAME", "TAG", "IMAGE ID", "LAYERS", "STORED", "CODEC", "DATE", "COMMIT"),
                       right=("LAYERS", "STORED"))
    for r in rows:
        table.add_row(r.name, r.tag, lib.short_id(r.image_id) or "-", str(r.layers) if r.layers else "archive",
                      decimal(r.stored_size), r.codec, r.date, r.commit or "-")
    print_table(table)


@task(auto_shortflags=False, help={"image": "Image name:tag to delete from the bucket (its manifest or archive).",
            "dry_run": DRY_RUN_HELP, "env_file": ENV_FILE_HELP})
@boundary
def delete(c, image, dry_run=False, env_file=None):
    """Delete an image tag from the bucket; its layers go with `fab images.gc`. Try --dry-run first."""
    _, storage = _storage(env_file)
    plan = lib.plan_delete(storage, image)
    for line in plan.describe():
        print(line)
    if not dry_run and plan.keys:
        print(f"Deleted {lib.execute_deletes(storage, plan.keys)} object(s).")


@task(auto_shortflags=False, help={"dry_run": DRY_RUN_HELP, "env_file": ENV_FILE_HELP})
@boundary
def gc(c, dry_run=False, env_file=None):
    """Delete layers no image in the bucket uses (older than an hour). Try --dry-run first."""
    _, storage = _storage(env_file)
    plan = lib.plan_gc(storage)
    for line in plan.describe():
        print(line)
    if not dry_run and plan.delete:
        print(f"Deleted {lib.execute_deletes(storage, [key for key, _ in plan.delete])} object(s).")


@task(name="abort-uploads", auto_shortflags=False, help={
    "older_than": "Only uploads started at least this many minutes ago (default 60: a push may be running).",
    "dry_run": DRY_RUN_HELP, "env_file": ENV_FILE_HELP})
@boundary
def abort_uploads(c, older_than=None, dry_run=False, env_file=None):
    """Abort unfinished multipart uploads under docker-images/ (`fab s3.abort-uploads` covers every folder)."""
    minutes = number(60 if older_than is None else older_than, "--older-than")  # None: see s3.abort_uploads
    _, storage = _storage(env_file)
    abort_stale(storage, storage.key("docker-images"), timedelta(minutes=minutes), f"{minutes:g} min", dry_run)


ns = Collection("images")
ns.add_task(list_, default=True)
ns.add_task(delete)
ns.add_task(gc)
ns.add_task(abort_uploads)
