"""`fab status` text from a host that writes escapes into every field it reports (GPU names, status, notes)."""

from __future__ import annotations

from deploy.flow.status import RunStatus
from deploy.hosts.probe import Gpu
from deploy.runtimes.base import ServiceState

HOSTILE = "\x1b[31m\x1b]0;owned\x07\r\x08\u202e"


def test_every_status_line_is_printable_and_stays_one_line() -> None:
    status = RunStatus(host="gpu-a", service=ServiceState(exists=True, running=False, status=f"exited{HOSTILE}\n(1)"),
                       uptime_seconds=None, gpus=(Gpu(name=f"NVIDIA{HOSTILE} A100\nfake", memory_mb=81920, driver="x"),),
                       log_tail=f"line one{HOSTILE}\nbar 10%\rline two\t!\n", latest_checkpoint=f"last{HOSTILE}.ckpt",
                       latest_step=5, latest_age_seconds=3, notes=(f"S3 not checked: {HOSTILE}",),
                       run=f"r1: failed (exit 1{HOSTILE})", progress=f"step 5, loss{HOSTILE} 0.3")
    lines = status.describe()
    assert all(ch.isprintable() or ch == "\t" for line in lines for ch in line)
    assert "service     exited  (1), 0 restarts" in lines
    assert "gpu         NVIDIA  A100 fake: ? busy, ?/81920 MiB" in lines
    assert "checkpoint  step 5 (last .ckpt), uploaded 3 s ago" in lines
    assert lines[-2:] == ["  line one", "  line two\t!"]
