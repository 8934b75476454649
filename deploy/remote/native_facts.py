"""What a native deploy finds on the host, as one JSON line: the interpreter, shipped files, virtualenv,
settings, supervisor and service. Read-only.

    NATIVE_PYTHON native_facts.py REMOTE_DIR MANIFEST VENV VENV_MARKER META SUPERVISOR_FILES RELEASE COMPOSE_FILE

Standard library only; deploy (deploy.runtimes.native) runs it with ``NATIVE_PYTHON -c``, so what it
reports about the interpreter (version, site folders, torch) is about the one the run's virtualenv
is made from. Paths after REMOTE_DIR are relative to it; SUPERVISOR_FILES is comma-separated.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import site
import sys
import sysconfig


def load(root: str, path: str):
    try:
        with open(os.path.join(root, path)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def digest(root: str, path: str) -> str | None:
    try:
        with open(os.path.join(root, path), "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def interpreter() -> dict:
    """This interpreter: where it is, its version and site folders, its torch, whether it has venv and pip, pip's
    version, and the platform and C library its wheels are built for (the wheel store's key)."""
    try:
        from importlib.metadata import version

        torch = version("torch")
    except Exception:  # noqa: BLE001 - no torch, or no importlib.metadata
        torch = None
    try:
        from importlib.metadata import version

        pip = version("pip")
    except Exception:  # noqa: BLE001 - no pip, or no importlib.metadata
        pip = None
    try:
        import ensurepip  # noqa: F401
        import venv  # noqa: F401

        has_venv = True
    except ImportError:
        has_venv = False
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else ""
    if user and os.path.isdir(user):
        dirs.append(user)
    return {"executable": sys.executable, "version": "%d.%d.%d" % sys.version_info[:3], "site": dirs,
            "torch": torch, "has_venv": has_venv, "has_pip": importlib.util.find_spec("pip") is not None,
            "pip": pip, "platform": sysconfig.get_platform(), "libc": " ".join(platform.libc_ver()).strip()}


def training_running(root: str, meta: str) -> bool:
    """Whether a training started here still holds ``train.lock`` (the supervisor's lock; see supervisor.py).

    Tested without creating the file or keeping the lock: a read-only open and a non-blocking flock.
    """
    try:
        import fcntl

        fd = os.open(os.path.join(root, meta, "train.lock"), os.O_RDONLY)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the lock if it was taken
    return False


def service(root: str, meta: str) -> dict:
    """The supervisor's liveness and state.json; ``status: orphaned`` when it is gone but its training runs."""
    alive = supervisor_alive(root, meta)
    state = load(root, os.path.join(meta, "state.json"))
    running = training_running(root, meta)
    if not alive and running:
        state = dict(state or {}, status="orphaned")
    return {"alive": alive, "state": state, "training": {"running": running}}


def supervisor_alive(root: str, meta: str) -> bool:
    try:
        with open(os.path.join(root, meta, "supervisor.pid")) as handle:
            pid = int(handle.read().strip() or 0)
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return b"supervisor.py" in handle.read()
    except (OSError, ValueError):
        return False


def facts(root: str, manifest_path: str, venv: str, venv_marker: str, meta: str, supervisor_files: str,
          release: str, compose_file: str) -> dict:
    manifest = load(root, manifest_path) or []
    files = {}
    for rel in manifest:
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError:
            continue
        files[rel] = [st.st_size, int(st.st_mtime)]
    venv_ok = os.path.exists(os.path.join(root, venv, "bin", "python"))
    return {
        "base": interpreter(), "manifest": manifest, "files": files,
        "meta": os.path.isdir(os.path.join(root, meta)),
        "venv": (load(root, venv_marker) or {}) if venv_ok else None,
        "supervisor": {n: digest(root, os.path.join(meta, n)) for n in supervisor_files.split(",")},
        "release": (load(root, release) or {}).get("release"),
        "compose": os.path.exists(os.path.join(root, compose_file)),
        "env": digest(root, ".env"),
        "service": service(root, meta),
    }


if __name__ == "__main__":
    print(json.dumps(facts(*sys.argv[1:9])))
