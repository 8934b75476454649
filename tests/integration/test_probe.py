"""The probe over real SSH."""

from __future__ import annotations

from deploy.hosts.probe import probe


def test_probe_reports_the_ssh_host(ssh_connection) -> None:
    facts = probe(ssh_connection, "/workspace/gpu-deploy-probe-test")
    assert facts.os and facts.arch and facts.python3.startswith("3.")
    assert facts.is_root
    assert facts.disk_free_kb > 0 and facts.disk_dir.startswith("/")
    assert not facts.remote_dir_exists
