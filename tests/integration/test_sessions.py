"""ssh sessions fab starts for the user (fab ssh, the TensorBoard tunnel): ssh's failure is the task's, in one
sentence; how the user leaves a shell is theirs; a tunnel's address is said only once something answers on it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness.fab import FAB, REPO
from tests.harness.servers import free_port


def fab(ssh_server, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    settings = {"RUNPOD_HOST": f"{ssh_server.user}@127.0.0.1:{ssh_server.port}",
                "RUNPOD_SSH_KEY": str(ssh_server.client_key), "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts),
                "REMOTE_DIR": "/tmp", "ENV_FILE": ""}
    return subprocess.run([FAB, "--search-root", str(REPO), *args], input=stdin, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **settings, **env})


def one_sentence(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def test_a_shell_the_user_leaves_with_a_status_is_not_a_failure_of_fab(ssh_server) -> None:
    result = fab(ssh_server, "ssh", stdin="echo inside; exit 3\n")
    assert result.returncode == 3, result.stderr
    assert "inside" in result.stdout and "Error" not in result.stderr


def test_ssh_that_cannot_log_in_is_one_sentence_naming_the_key(ssh_server, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    line = one_sentence(fab(ssh_server, "ssh", RUNPOD_SSH_KEY=str(stranger)))
    assert f"refused authentication with {stranger}" in line


def test_a_tunnel_whose_tensorboard_never_starts_fails_without_an_address(ssh_server) -> None:
    # The host's REMOTE_DIR does not exist, so TensorBoard there never starts; ssh itself logs in.
    result = fab(ssh_server, "tensorboard", "--via", "ssh", "--port", str(free_port()),
                 REMOTE_DIR="/nonexistent/run")
    line = one_sentence(result)
    assert "TensorBoard on http" not in result.stdout
    assert line.startswith(f"Error: TensorBoard on {ssh_server.user}@127.0.0.1:{ssh_server.port} did not start: ssh "
                           "ended with exit"), line
