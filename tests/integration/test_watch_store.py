"""The managed-run watcher's state on each kind of store, over HTTP: moto (honours conditional writes), and
a proxy that ignores or refuses them. Where the store keeps its promise, a second watcher takes the run over
and the first stops; where it does not, the watcher says so and a lease object keeps a second one out."""

from __future__ import annotations

import dataclasses

import pytest

from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.watch.managed import _store
from deploy.watch.record import WatchError
from deploy.watch.state import WATCHING, PodRecord, WatchState
from tests.harness.s3proxy import ProxiedEnv

T0 = 1_800_000_000.0


def state(run_id: str) -> WatchState:
    pod = PodRecord(name=f"gpu-deploy-3f2a9c1b-run-{run_id}-1", attempt=1, asked_at=T0, price=0.79, id="pod-a")
    return WatchState(run_id=run_id, started_at=T0, project="3f2a9c1b", phase=WATCHING, pods=(pod,),
                      current=pod.name)


def test_one_watcher_drives_a_run_on_every_kind_of_store(proxied_s3_env: ProxiedEnv) -> None:
    settings = load_settings(overrides={**proxied_s3_env.env, "RUNPOD_API_KEY": "rp-int-key"}, environ={})
    storage = Storage.from_settings(settings)
    said: list[str] = []
    first = _store(settings, storage, "r-store", said.append)
    honoured = proxied_s3_env.mode == "honour"
    assert first.conditional is honoured
    assert bool(said) is not honoured and (honoured or "only one watcher may run per run" in said[0])

    etag = first.save(state("r-store"), None)
    second = _store(settings, storage, "r-store", lambda line: None)
    loaded, seen = second.load()
    assert loaded == state("r-store")
    if honoured:
        second.save(dataclasses.replace(loaded, restarts=1), seen)          # the second takes the run over
        with pytest.raises(WatchError, match="Another watcher took over run r-store"):
            first.save(dataclasses.replace(loaded, restarts=2), etag)      # and the first stops
    else:
        with pytest.raises(WatchError, match=r"Another watcher \(\S+\) holds run r-store until .* only one watcher"):
            second.save(dataclasses.replace(loaded, restarts=1), seen)
        first.release_lease()                                              # the first one stops cleanly
        second.save(dataclasses.replace(loaded, restarts=1), seen)
