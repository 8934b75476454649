"""The deploy flow: probe -> choose the runtime -> gather -> plan (printed) -> execute, whatever the runtime.

rollout.py one host at a time (and the dataset step the flow owns) - group.py a multi-node run -
choose.py which runtime a host gets - sources.py the image in the bucket and a local dataset folder -
status.py watching a run. The flow calls runtimes only through deploy.runtimes.base.Runtime.
"""
