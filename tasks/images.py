"""`fab image-to-s3`, `fab image-from-s3`, `fab images.*`: Docker images through the bucket."""

from __future__ import annotations

import json as jsonlib

from invoke import Collection, task
from rich.filesize import decimal

from deploy import images as lib
from deploy.storage import IMAGES, Storage
from tasks._boundary import BUCKET_FLAGS, DRY_RUN_HELP, JSON_HELP, boundary, settings_from_flags
from tasks._progress import RichImageProgress
from tasks._reach import reach
from tasks._table import make_table, print_table
from tasks.s3 import OLDER_THAN_HELP, abort_older_than, incomplete

IMAGE_HELP = "Image name:tag (default: IMAGE from settings)."


def _storage(env_file, bucket, prefix, dry_run=False, **flags):
    """Settings, the bucket (checked before any work) and, for a dry run, what could not be checked."""
    settings = settings_from_flags(env_file=env_file, S3_BUCKET=bucket, S3_PREFIX=prefix, **flags)
    storage = Storage.from_settings(settings, interactive=True)
    return settings, storage, reach(settings, storage=storage, collect=dry_run)


@task(name="image-to-s3", auto_shortflags=False, help={
    "image": IMAGE_HELP,
    "codec": "Compression: zstd (multi-threaded, default), gzip (compatibility) or none.",
    "format": "layers (default: only the layers the bucket lacks) or archive (one .tar.gz/.tar.zst object).",
    "force": "Upload again even when the bucket already has the image and its layers.",
    "dry_run": DRY_RUN_HELP,
    **BUCKET_FLAGS,
})
@boundary
def image_to_s3(c, image=None, codec="zstd", format="layers", force=False, dry_run=False, env_file=None, bucket=None,
                prefix=None):
    """Push a local Docker image to the bucket, moving only the layers it does not have."""
    client = lib.docker_client()  # the local engine first: no bucket is asked for an image that is not here
    settings, storage, gaps = _storage(env_file, bucket, prefix, dry_run, IMAGE=image)
    if gaps:
        incomplete(gaps, f"would push {settings.image} to {storage.url(storage.key(IMAGES))}; which of its layers "
                         "the bucket lacks: not checked")
    plan = lib.plan_push(client, storage, settings.image, codec, format, force)
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
    **BUCKET_FLAGS,
})
@boundary
def image_build(c, image=None, base_image=None, project=None, push=False, force=False, network=None, dry_run=False,
                env_file=None, bucket=None, prefix=None):
    """Build the training image: BASE_IMAGE + the train extra + the training project's requirements (no code)."""
    from deploy.images.build import build, plan_build
    from deploy.project import TrainProject

    flags = {"S3_BUCKET": bucket, "S3_PREFIX": prefix}
    settings = settings_from_flags(env_file=env_file, IMAGE=image, BASE_IMAGE=base_image, TRAIN_PROJECT=project,
                                   **flags)
    train_project = TrainProject.from_settings(settings)
    client = lib.docker_client()
    storage, gaps = None, []
    if push:  # the bucket answers before a build that would be pushed to it
        storage = Storage.from_settings(settings, interactive=True)
        gaps = reach(settings, storage=storage, collect=dry_run)
    plan = plan_build(client, train_project, settings.image, settings.base_image, force)
    for line in plan.describe():
        print(line)
    if gaps:
        incomplete(gaps)
    if dry_run:
        return
    result = build(client, plan, network_mode=network)
    print(result.summary())
    if storage is not None:
        for ref in dict.fromkeys(result.tags):
            pushed = lib.push(client, storage, ref, progress=RichImageProgress())
            print(pushed.summary())


@task(name="image-from-s3", auto_shortflags=False, help={
    "image": IMAGE_HELP,
    "hosts": "Host (user@host:port) to load the image on (default: fab -H, else RUNPOD_HOST, else this machine).",
    "local": "Load into this machine's engine even when RUNPOD_HOST is set.",
    "dry_run": DRY_RUN_HELP,
    **BUCKET_FLAGS,
})
@boundary
def image_from_s3(c, image=None, hosts=None, local=False, dry_run=False, env_file=None, bucket=None, prefix=None):
    """Load an image from the bucket into a host's engine (or this machine's), fetching only missing layers."""
    from deploy.hosts import connect
    from tasks._hosts import options, targets

    settings = settings_from_flags(env_file=env_file, S3_BUCKET=bucket, S3_PREFIX=prefix, IMAGE=image)
    storage = Storage.from_settings(settings, interactive=True)
    ref = settings.image
    via_fab = hasattr(c, "host") and hasattr(c, "port")
    specs = targets(c, settings, hosts)[:1] if not local and (via_fab or hosts or settings.runpod_host) else []
    gaps = reach(settings, storage=storage, hosts=specs, collect=dry_run)
    if gaps:
        incomplete(gaps, f"would load {ref} from {storage.url(storage.key(IMAGES))} into "
                         f"{specs[0] if specs else 'this machine'}'s engine: not checked")
    runner, where, close = c, "this machine", None
    if specs:
        runner = connect(specs[0], options(settings))
        where, close = str(specs[0]), runner
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


@task(name="list", auto_shortflags=False, help={"json": JSON_HELP, **BUCKET_FLAGS})
@boundary
def list_(c, json=False, env_file=None, bucket=None, prefix=None):
    """The images in the bucket: name, tag, image id, layers, stored size, codec, date, commit."""
    _, storage, _ = _storage(env_file, bucket, prefix)
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
            "dry_run": DRY_RUN_HELP, **BUCKET_FLAGS})
@boundary
def delete(c, image, dry_run=False, env_file=None, bucket=None, prefix=None):
    """Delete an image tag from the bucket; its layers go with `fab images.gc`. Try --dry-run first."""
    _, storage, gaps = _storage(env_file, bucket, prefix, dry_run)
    if gaps:
        incomplete(gaps, f"would delete {image} from {storage.url(storage.key(IMAGES))}: not checked")
    plan = lib.plan_delete(storage, image)
    for line in plan.describe():
        print(line)
    if not dry_run and plan.keys:
        print(f"Deleted {lib.execute_deletes(storage, plan.keys)} object(s).")


@task(auto_shortflags=False, help={"dry_run": DRY_RUN_HELP, **BUCKET_FLAGS})
@boundary
def gc(c, dry_run=False, env_file=None, bucket=None, prefix=None):
    """Delete layers no image in the bucket uses (older than an hour). Try --dry-run first."""
    _, storage, gaps = _storage(env_file, bucket, prefix, dry_run)
    if gaps:
        incomplete(gaps, f"would delete the layers no image uses under {storage.url(storage.key(IMAGES))}; which "
                         "they are: not checked")
    plan = lib.plan_gc(storage)
    for line in plan.describe():
        print(line)
    if not dry_run and plan.delete:
        print(f"Deleted {lib.execute_deletes(storage, [key for key, _ in plan.delete])} object(s).")


@task(name="abort-uploads", auto_shortflags=False, help={
    "older_than": OLDER_THAN_HELP, "dry_run": DRY_RUN_HELP, **BUCKET_FLAGS})
@boundary
def abort_uploads(c, older_than=None, dry_run=False, env_file=None, bucket=None, prefix=None):
    """Abort unfinished multipart uploads under docker-images/ (`fab s3.abort-uploads` covers every folder)."""
    abort_older_than(c, older_than, dry_run, env_file, bucket, prefix, (IMAGES,))


ns = Collection("images")
ns.add_task(list_, default=True)
ns.add_task(delete)
ns.add_task(gc)
ns.add_task(abort_uploads)
