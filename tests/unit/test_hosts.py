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
        ("h:2222/dir//sub", HostSpec("h", 2222, "root", "/dir/sub")),
        ("h:2222//dir/./sub///", HostSpec("h", 2222, "root", "/dir/sub")),
        ("h/with space/and;semicolon", HostSpec("h", 22, "root", "/with space/and;semicolon")),
    ],
)
def test_host_spec_parse(text: str, expected: HostSpec) -> None:
    assert HostSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["host:abc", "host:0", "host:70000", "root@", "", "h:22/a/../b", "h:22/",
                                  "h:22//", "h:22/a\nb", "h:22/a\x00b", "h:22/a\tb"])
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


@pytest.mark.parametrize(("remote_dir", "expected"), [("/workspace/run/", "/workspace/run"),
                                                      ("//workspace//run", "/workspace/run"),
                                                      ("/work space/r;un", "/work space/r;un")])
def test_remote_dir_is_normalised_once_by_the_settings_and_a_host_uses_it(remote_dir: str, expected: str) -> None:
    settings = load_settings(environ={"REMOTE_DIR": remote_dir})
    assert settings.remote_dir == expected and HostSpec("h").workdir(settings.remote_dir) == expected


@pytest.mark.parametrize("remote_dir", ["relative/run", "/a/../b", "/", "/r\nun", "/r\x7fun"])
def test_a_bad_remote_dir_is_refused_in_one_sentence(remote_dir: str) -> None:
    with pytest.raises(ConfigError, match="REMOTE_DIR") as err:
        load_settings(environ={"REMOTE_DIR": remote_dir})
    assert "\n" not in str(err.value)
    if remote_dir.strip() == remote_dir:  # an address is stripped as a setting is
        with pytest.raises(ConfigError, match="The folder in") as err:  # a host's own folder: the same rule
            HostSpec.parse(f"h:22{remote_dir}" if remote_dir.startswith("/") else f"h:22/{remote_dir}/../x")
        assert "\n" not in str(err.value)


def test_a_path_under_a_folder_given_with_slashes_is_not_refused() -> None:
    from deploy.hosts.results import remote_path

    spec = HostSpec.parse("h:22/workspace//run/")
    assert remote_path(spec.workdir("/ignored"), "lightning_logs") == "/workspace/run/lightning_logs"
    assert remote_path("/workspace//run/", "lightning_logs/") == "/workspace/run/lightning_logs"
