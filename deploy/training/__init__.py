"""The training side: code that runs inside the training container.

- :mod:`deploy.training.callbacks`: ``S3CheckpointSync`` and ``S3LogSync``, Lightning callbacks
  (their parts: :mod:`~deploy.training.syncbase`, :mod:`~deploy.training.checkpoint_io`,
  :mod:`~deploy.training.logsync`).
- :mod:`deploy.training.uploader`: the background uploader they share (bounded queue, retries).
- :mod:`deploy.training.transfer`: the helper process that does the uploads' network work.
- :mod:`deploy.training.journal`: which checkpoints were staged for upload and not yet confirmed.
- :mod:`deploy.training.recovery`: on start, send what a killed run left staged.
- :mod:`deploy.training.stop`: SIGTERM: one flush deadline, the stop decided on every rank.
- :mod:`deploy.training.lease`: one writer per run: the run's lease (granted per deploy, claimed by
  the training, checked before every write). Torch-free: the deploy flow and the watcher use it too.
- :mod:`deploy.training.resume`: ``CHECKPOINT`` -> a verified local checkpoint file.
- :mod:`deploy.training.entrypoint`: the image's entrypoint (resume, run, pass signals on).
- :mod:`deploy.training.warmstart`: the entrypoint's warm processes (started ahead, standing by) and
  reload requests; :mod:`deploy.training.warm` is the process itself, :mod:`deploy.training.reload` asks.
- :mod:`deploy.training.demo`: a tiny LightningCLI job for the image, the tests and the benchmark.

The operator's side imports only the torch-free parts (the lease, the journal's names): torch and
Lightning are only in the ``train`` extra.
"""
