"""The `fab` entry point: it only composes the task collections from `tasks/`."""

from invoke import Collection

from tasks import config, images, pods, runpod, runs, s3, tensorboard, train

ns = Collection()
ns.add_task(config.config)
for _task in runpod.ns.tasks.values():  # the run's tasks sit at the top: fab deploy-runpod
    ns.add_task(_task)
ns.add_collection(s3.ns)
ns.add_task(images.image_build)
ns.add_task(images.image_to_s3)
ns.add_task(images.image_from_s3)
ns.add_collection(images.ns)
ns.add_collection(pods.ns)
ns.add_collection(runs.ns)
ns.add_task(tensorboard.tensorboard)
ns.add_collection(train.ns)
