"""Parsing host specs and choosing hosts from settings and flags."""

from __future__ import annotations

import pytest

from deploy.errors import ConfigError
from deploy.hosts import HostSpec, hosts_from, require_sftp
from deploy.errors import HostError
from deploy.settings import load_settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gpu1", HostSpec("gpu1", 22, "root")),
        ("ubuntu@gpu1", HostSpec("gpu1", 22, "ubuntu")),
        ("root@203.0.113.10:40022", HostSpec("203.0.113.10", 40022, "root")),
        ("[2001:db8::1]:2222", HostSpec("2001:db8::1", 2222, "root")),
        ("2001:db8::1", HostSpec("2001:db8::1", 22, "root")),
        ("root@127.0.0.1:2201/tmp/node0/", HostSpec("127.0.0.1", 2201, "root", "/tmp/node0")),
    ],
)
def test_host_spec_parse(text: str, expected: HostSpec) -> None:
    assert HostSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["host:abc", "host:0", "host:70000", "root@", "", "h:22/a/../b"])
def test_host_spec_parse_rejects_bad_input(text: str) -> None:
    with pytest.raises(ConfigError):
        HostSpec.parse(text)


def test_hosts_come_from_the_flag_before_settings() -> None:
    settings = load_settings(environ={"RUNPOD_HOST": "a.example", "RUNPOD_PORT": "2200", "RUNPOD_USER": "me"})
    assert hosts_from(settings) == [HostSpec("a.example", 2200, "me")]
    assert hosts_from(settings, "b.example,c.example:22") == [
        HostSpec("b.example", 2200, "me"), HostSpec("c.example", 22, "me")]


def test_missing_host_names_the_key() -> None:
    with pytest.raises(ConfigError, match="RUNPOD_HOST"):
        hosts_from(load_settings(environ={}))


def test_duplicate_hosts_are_refused() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        hosts_from(load_settings(environ={}), "a:22,a")


def test_runpod_proxy_is_detected_and_refused_for_file_transfer() -> None:
    spec = HostSpec.parse("abc123-64411a@ssh.runpod.io")
    assert spec.is_runpod_proxy
    with pytest.raises(HostError, match="exposed TCP port"):
        require_sftp(spec)
    require_sftp(HostSpec.parse("root@203.0.113.10:40022"))
