"""Which hosts a task works on: --hosts, then RUNPOD_HOST, then the pods `fab pods.up` made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from invoke import Context

from deploy.errors import ConfigError
from deploy.settings import load_settings
from tasks._hosts import targets


def _pods_file(folder: Path) -> None:
    (folder / ".gpu-deploy").mkdir()
    (folder / ".gpu-deploy" / "pods.json").write_text(json.dumps(
        {"pods": {"pod1": {"host": "root@198.51.100.7:40022", "name": "gpu-deploy-x-1"}}}))


def test_a_pod_made_by_pods_up_is_the_host_when_runpod_host_is_unset(tmp_path: Path) -> None:
    _pods_file(tmp_path)
    spec, = targets(Context(), load_settings(), None)
    assert (spec.host, spec.port, spec.user) == ("198.51.100.7", 40022, "root")


def test_runpod_host_and_the_hosts_flag_win_over_known_pods(tmp_path: Path) -> None:
    _pods_file(tmp_path)
    assert targets(Context(), load_settings(overrides={"RUNPOD_HOST": "203.0.113.1"}), None)[0].host == "203.0.113.1"
    assert targets(Context(), load_settings(), "203.0.113.2:2222")[0].port == 2222


def test_no_host_and_no_pod_names_runpod_host() -> None:
    with pytest.raises(ConfigError, match="RUNPOD_HOST"):
        targets(Context(), load_settings(), None)
