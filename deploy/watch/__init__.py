"""Managed runs on RunPod pods: a watcher that keeps a run going through preemption, crashes and lost pods,
and leaves nothing billing.

- :mod:`.state`: what it remembers: every pod from the intent to create it to its confirmed end, spend, hours.
- :mod:`.facts`: its limits, one look at the run, the actions it decides (plain data).
- :mod:`.decide`: the rules, pure (the state and one observation in, the next state and actions out).
- :mod:`.observe`: the run over SSH (the pods come from the API through :mod:`.act`).
- :mod:`.record`: the state in the bucket (``runs/<run-id>/watch/state.json``), signed; one watcher per run.
- :mod:`.act`: the hands: ask for a pod, end one, arm its backstop, deploy, stop, sync.
- :mod:`.loop`: observe, decide, save, act; every event to the run ledger and the console.
- :mod:`.managed`: ``fab train`` and ``fab train.watch`` as library calls; what a detach and the end say.
- :mod:`.owners`: who owns each of the project's pods (``fab pods``), and the orphans.
"""
