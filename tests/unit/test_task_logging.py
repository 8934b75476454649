"""What reaches the operator's terminal from libraries' logging: not paramiko's transport thread (a host that drops
the connection is said in one sentence), whatever handler the root logger has."""

from __future__ import annotations

import io
import logging

import pytest

from deploy.errors import HostError
from deploy.watch.act import host_errors
from tasks._boundary import _prepare_logging


def test_paramiko_records_never_reach_the_terminal() -> None:
    ssh, root = logging.getLogger("paramiko"), logging.getLogger()
    saved = (list(ssh.handlers), ssh.propagate)
    seen = io.StringIO()
    handler = logging.StreamHandler(seen)  # as logging.basicConfig would add (the runpod SDK's import did)
    root.addHandler(handler)
    try:
        _prepare_logging()
        _prepare_logging()  # every task calls it: nothing is added twice
        assert sum(isinstance(h, logging.NullHandler) for h in ssh.handlers) == 1
        logging.getLogger("paramiko.transport").error("Traceback (most recent call last):")
        logging.getLogger("deploy.somewhere").error("a record of our own")
    finally:
        root.removeHandler(handler)
        ssh.handlers[:], ssh.propagate = saved
    assert seen.getvalue() == "a record of our own\n"


def test_a_connection_dropped_without_a_message_is_named() -> None:
    with pytest.raises(HostError, match=r"^The deploy on h:22 failed: the connection was lost \(EOFError\)$"):
        with host_errors("The deploy", "h:22"):
            raise EOFError()


def test_a_task_writes_each_line_to_a_redirected_stdout_as_it_prints_it(monkeypatch) -> None:
    from tasks._boundary import boundary

    written = io.BytesIO()
    redirected = io.TextIOWrapper(written, encoding="utf-8")  # a file or a pipe: block-buffered
    monkeypatch.setattr("sys.stdout", redirected)

    @boundary
    def task() -> bytes:
        print("deploying to root@127.0.0.1:22")
        return written.getvalue()  # what the file holds before the task has ended

    assert task() == b"deploying to root@127.0.0.1:22\n"
