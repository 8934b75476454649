"""What code travels to a host and how, the same for every runtime (runtime-neutral: no runtime's internals).

layout.py where a deploy keeps things under REMOTE_DIR - tree.py what of the training project ships -
shipped.py what of gpu-deploy ships - sync.py the incremental transfer (only changed files move, stale
ones go). The compose runtime bind-mounts REMOTE_DIR as the container's ``/workspace`` and the native
runtime runs in it, so both use these as they are.
"""
