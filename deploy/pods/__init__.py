"""RunPod pods from the API: GPU types and prices, create with a GPU fallback list, list, stop, terminate.

- :mod:`.models`: typed records of what the API says (GPU types, pods, the SSH endpoint), the errors.
- :mod:`.plan`: pure decisions (fallback order, price cap, the project's name prefix, cost, whether a
  pod may be terminated).
- :mod:`.api`: a thin wrapper over the official ``runpod`` SDK.
- :mod:`.provision`: create with fallback, wait for the public SSH port.
- :mod:`.guard`: the pod's checkpoints against the bucket's newest, before a volume is deleted.
- :mod:`.state`: ``.gpu-deploy/pods.json``, so deploy finds the pod without RUNPOD_HOST
  (:func:`deploy.pods.state.known_hosts`).
- :mod:`.lifecycle`: the pod tasks as library calls.
"""
