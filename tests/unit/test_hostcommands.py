"""Remote commands built from lists, their failures as one sentence, and the one rsync command line."""

from __future__ import annotations

import pytest
from invoke import Context

from deploy.errors import HostError
from deploy.hosts import HostOptions, HostSpec
from deploy.hosts.remote import cause, command, run
from deploy.hosts.rsync import remote, rsync_command

SPEC = HostSpec("203.0.113.10", 40022, "root")
SSH_REFUSED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
Permissions 0644 for '/home/me/.ssh/id' are too open.
This private key will be ignored.
root@203.0.113.10: Permission denied (publickey).
rsync: connection unexpectedly closed (0 bytes received so far) [sender]
rsync error: unexplained error (code 255) at io.c(232) [sender=3.2.7]
"""


def test_the_cause_of_an_rsync_failure_is_ssh_s_not_rsync_s_summary() -> None:
    assert cause(SSH_REFUSED) == ("WARNING: UNPROTECTED PRIVATE KEY FILE!; "
                                  "root@203.0.113.10: Permission denied (publickey).")
    assert cause("root@h: Permission denied (publickey).\nrsync: connection unexpectedly closed\n"
                 "rsync error: unexplained error (code 255)") == "root@h: Permission denied (publickey)."


def test_the_cause_of_a_python_failure_is_its_exception_line() -> None:
    assert cause("Traceback (most recent call last):\n  File \"x\", line 1\nValueError: bad value\n") == \
        "ValueError: bad value"
    assert cause("") == "" and cause("just one line") == "just one line"


def test_commands_are_quoted_from_lists() -> None:
    assert command(["mkdir", "-p", "/work space/run"]) == "mkdir -p '/work space/run'"
    assert command(["pip", "install"], cwd="/a b", log_file="/a b/pip.log") == \
        "cd '/a b' && pip install > '/a b/pip.log' 2>&1"


def test_a_failed_command_is_one_sentence_with_its_cause() -> None:
    with pytest.raises(HostError, match=r"^Creating the folder failed on localhost: mkdir: no space left$"):
        run(Context(), ["sh", "-c", "echo noise; echo 'mkdir: no space left' >&2; exit 3"], "Creating the folder")
    assert not run(Context(), ["false"], "Trying", warn=True).ok


def test_a_failure_with_a_log_file_quotes_the_log(tmp_path) -> None:
    log = str(tmp_path / "pip log.txt")
    with pytest.raises(HostError, match=r"pip install failed on localhost: ERROR: No matching distribution "
                                        r"found for nope \(full log: .*pip log.txt\)"):
        run(Context(), ["sh", "-c", "echo Collecting nope; echo 'ERROR: No matching distribution found for nope'; "
                                    "exit 1"], "pip install", log_file=log)


def test_rsync_protects_args_and_quotes_nothing_by_hand(tmp_path) -> None:
    key = tmp_path / "k"
    key.write_text("a key\n")
    key.chmod(0o600)
    argv = rsync_command(SPEC, HostOptions(key_file=str(key), known_hosts="/kh"), ["-a"], "/local dir/",
                         remote(SPEC, "/workspace/my run/"))
    assert argv[:3] == ["rsync", "--protect-args", "-a"]
    assert argv[-1] == "root@203.0.113.10:/workspace/my run/" and argv[-2] == "/local dir/"
    ssh = argv[argv.index("-e") + 1]
    assert ssh.startswith("ssh -p 40022 -o BatchMode=yes") and f"-i {key}" in ssh


def test_an_ipv6_host_is_bracketed_for_rsync() -> None:
    assert remote(HostSpec("2001:db8::1", 22, "u"), "/x") == "u@[2001:db8::1]:/x"
