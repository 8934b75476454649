"""Managed runs on RunPod pods: a watcher that keeps a run going through preemption, crashes and lost pods.

- :mod:`.decide`: the rules, pure (the state and one observation in, the next state and actions out).
- :mod:`.observe`: the facts: the pod from the API (every few seconds), the run over SSH (less often).
- :mod:`.record`: the watcher's state in the bucket (``runs/<run-id>/watch/state.json``), so a
  restarted watcher resumes, and a second watcher of the same run is refused.
- :mod:`.act`: the actions: provision a pod, deploy to it, restart, sync results, stop, terminate.
- :mod:`.loop`: poll, decide, act, save; every event to the run ledger and the console.
"""
