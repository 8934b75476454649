"""The host-side programs in deploy/remote/, run here as a host would run them (plain sh and python3)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.hosts.probe import NATIVE_MARKER, parse_facts
from deploy.hosts.remote import program_source
from deploy.runtimes.code.layout import MANIFEST, META, RELEASE
from deploy.runtimes.native.layout import SUPERVISOR_FILES, VENV, VENV_MARKER
from deploy.runtimes.native.plan import COMPOSE_FILE, parse_gathered

REMOTE = Path(__file__).resolve().parents[2] / "deploy" / "remote"


def python(name: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -c <program> args``, exactly as deploy runs it on a host."""
    return subprocess.run([sys.executable, "-c", program_source(name), *args], capture_output=True, text=True,
                          timeout=timeout)


# --------------------------------------------------------------------------- probe.sh


def test_the_probe_script_reports_this_machine_and_a_native_deploy(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / META).mkdir(parents=True)
    (run_dir / NATIVE_MARKER).write_text("# the supervisor\n")
    out = subprocess.run(["sh", str(REMOTE / "probe.sh"), str(run_dir), NATIVE_MARKER], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    facts = parse_facts(out)
    assert facts.os and facts.arch and facts.cpus >= 1 and facts.python3.startswith("3.")
    assert facts.remote_dir_exists and facts.native and facts.disk_dir == str(run_dir)


def test_the_probe_script_finds_the_disk_of_a_folder_not_made_yet(tmp_path: Path) -> None:
    out = subprocess.run(["sh", str(REMOTE / "probe.sh"), str(tmp_path / "a" / "b"), NATIVE_MARKER],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    facts = parse_facts(out)
    assert not facts.remote_dir_exists and not facts.native
    assert facts.disk_dir == str(tmp_path) and facts.disk_free_kb > 0


# --------------------------------------------------------------------------- native_facts.py


def native_facts(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return python("native_facts.py", str(run_dir), MANIFEST, VENV, VENV_MARKER, META, ",".join(SUPERVISOR_FILES),
                  RELEASE, COMPOSE_FILE)


def test_native_facts_on_a_fresh_folder_says_nothing_is_there(tmp_path: Path) -> None:
    state = parse_gathered(native_facts(tmp_path / "run").stdout)
    assert state.base is not None and state.base.executable == sys.executable
    assert not state.meta_exists and state.venv is None and state.env_digest is None
    assert not state.service.exists and not state.manifest


def test_native_facts_reads_what_a_deploy_left(tmp_path: Path) -> None:
    (tmp_path / META).mkdir()
    (tmp_path / "train.py").write_text("print()\n")
    os.utime(tmp_path / "train.py", (1_700_000_000, 1_700_000_000))
    (tmp_path / MANIFEST).write_text(json.dumps(["train.py", "gone.py"]))
    (tmp_path / RELEASE).write_text(json.dumps({"release": "r1"}))
    (tmp_path / ".env").write_text("A='1'\n")
    (tmp_path / META / "state.json").write_text(json.dumps({"status": "stopped"}))
    state = parse_gathered(native_facts(tmp_path).stdout)
    assert state.meta_exists and state.files == {"train.py": (8, 1_700_000_000)}
    assert state.manifest == {"train.py", "gone.py"} and state.release == "r1"
    assert state.env_digest == hashlib.sha256(b"A='1'\n").hexdigest()
    assert state.service.exists and state.service.status == "stopped" and not state.service.running


# --------------------------------------------------------------------------- rendezvous.py


def test_the_rendezvous_listener_answers_once_bound_and_others_connect() -> None:
    listening = python("rendezvous.py", "listen", "0", "10")
    word, port, pid = listening.stdout.split()
    assert listening.returncode == 0 and word == "listening"
    try:
        assert python("rendezvous.py", "connect", "127.0.0.1", port).returncode == 0
        assert python("rendezvous.py", "connect", "127.0.0.1", port).returncode == 0  # it keeps accepting
    finally:
        os.kill(int(pid), 15)


def test_a_busy_port_is_reported_and_an_unreachable_one_fails() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        refused = python("rendezvous.py", "listen", port, "5")
        assert refused.returncode == 1 and refused.stdout.startswith(f"cannot listen on port {port}")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        free = str(closed.getsockname()[1])
    unreachable = python("rendezvous.py", "connect", "127.0.0.1", free)
    assert unreachable.returncode == 1 and unreachable.stdout.startswith("unreachable:")


# --------------------------------------------------------------------------- fetch_dataset.py


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A folder served over HTTP on 127.0.0.1, standing in for presigned S3 URLs."""
    root = tmp_path / "bucket"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    thread.join()


def job(tmp_path: Path, dest: Path, base: str, files: dict[str, bytes], delete: list[str],
        corrupt: str | None = None) -> Path:
    items = [{"path": rel, "url": f"{base}/{rel}", "size": len(data),
              "sha256": hashlib.sha256(b"other" if rel == corrupt else data).hexdigest()}
             for rel, data in files.items()]
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"dest": str(dest), "fetch": items, "delete": delete, "marker": {"dataset": "tiny"},
                                "marker_name": ".marker.json"}))
    return path


def test_fetch_dataset_downloads_verifies_deletes_and_marks_last(served, tmp_path: Path) -> None:
    base, root = served
    files = {"config.json": b"{}", "wavs/a.wav": b"RIFF" + bytes(3000)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    dest = tmp_path / "data"
    (dest / "wavs").mkdir(parents=True)
    (dest / "wavs" / "old.wav").write_bytes(b"old")
    plan = job(tmp_path, dest, base, files, ["wavs/old.wav", "never-there.wav"])
    done = python("fetch_dataset.py", str(plan))
    assert done.returncode == 0 and done.stdout.strip() == "staged 2 files, 3006 bytes"
    assert (dest / "wavs" / "a.wav").read_bytes() == files["wavs/a.wav"] and not (dest / "wavs" / "old.wav").exists()
    assert json.loads((dest / ".marker.json").read_text()) == {"dataset": "tiny"}
    assert not plan.exists()  # the job file (presigned URLs) is gone once read


def test_fetch_dataset_refuses_a_corrupt_file_and_leaves_no_marker(served, tmp_path: Path) -> None:
    base, root = served
    (root / "a.bin").write_bytes(b"12345")
    dest = tmp_path / "data"
    failed = python("fetch_dataset.py", str(job(tmp_path, dest, base, {"a.bin": b"12345"}, [], corrupt="a.bin")))
    assert failed.returncode == 1 and "corrupt: a.bin" in failed.stderr
    assert not (dest / "a.bin").exists() and not (dest / "a.bin.part").exists()
    assert not (dest / ".marker.json").exists()  # an interrupted stage is redone next time
