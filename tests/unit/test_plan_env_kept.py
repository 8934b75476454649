"""The dry-run plan names the .env keys that stay on the laptop (names only), for every runtime."""

from __future__ import annotations

from dataclasses import replace

from deploy.hosts.envfile import EnvShipment
from deploy.runtimes.native.plan import NativeDesired, NativeState, plan_native
from deploy.settings import Secret
from tests.unit.test_native import BASE, DESIRED, FACTS, SPEC


def described(desired: NativeDesired) -> list[str]:
    return plan_native(SPEC, desired, NativeState(base=BASE), FACTS).describe()


def test_the_plan_names_the_keys_left_behind() -> None:
    env = EnvShipment(keys=("S3_BUCKET",), _content=Secret("S3_BUCKET='b'\n"),
                      left_behind=("GITHUB_TOKEN", "OTHER"))
    lines = described(replace(DESIRED, env=env))
    kept = [line for line in lines if line.startswith("env kept")]
    assert kept == ["env kept  GITHUB_TOKEN, OTHER (not shipped; SHIP_ENV_INCLUDE adds keys)"]
    assert lines.index(kept[0]) == lines.index("env keys  S3_BUCKET") + 1


def test_no_line_when_every_key_ships() -> None:
    assert not [line for line in described(DESIRED) if line.startswith("env kept")]
