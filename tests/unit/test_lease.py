"""The run's lease: the grant and claim rules (pure), their conditional writes, and the fence on writes.

The rules are functions of (lease, request, time); the bucket parts run on moto's in-process S3.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

pytest.importorskip("lightning", reason="the training side's lease needs lightning (the train extra)")

from deploy.training.lease import (ATTEMPT_FILE, Lease, LeaseLost, attempt_document, attempt_from_environment, check,
                                   claim, fence, grant, lease_key, next_claim, next_grant, read_attempt, read_lease,
                                   update_lease)
from deploy.training.stop import STOP
from deploy.training.syncbase import refuse_when_superseded
from deploy.training.uploader import BackgroundUploader, UploadJob

NOW = datetime(2026, 11, 30, 6, 2, tzinfo=timezone.utc)
RUN = "20261130-0602-a1b2"
HOST_A, HOST_B = "root@203.0.113.5:40022", "root@203.0.113.7:40022"


# --------------------------------------------------------------------------- the rules


def test_the_first_deploy_of_a_run_takes_attempt_one_and_each_next_deploy_the_next() -> None:
    first = next_grant(None, RUN, HOST_A, NOW)
    assert (first.granted, first.claimed, first.granted_to) == (1, 0, HOST_A)
    assert next_grant(first, RUN, HOST_B, NOW).granted == 2


def test_a_grant_goes_above_an_attempt_claimed_without_a_grant() -> None:
    claimed_by_hand = Lease(run=RUN, granted=2, claimed=5, claimed_by=HOST_A)
    assert next_grant(claimed_by_hand, RUN, HOST_B, NOW).granted == 6


def test_a_training_of_an_older_attempt_is_superseded_and_writes_nothing() -> None:
    lease = Lease(run=RUN, granted=4, claimed=4, claimed_by=HOST_B)
    assert next_claim(lease, RUN, 3, HOST_A, NOW) is None
    assert lease.supersedes(3) and not lease.supersedes(4) and not lease.supersedes(5)


def test_a_restart_of_the_attempt_that_holds_the_run_writes_nothing_and_goes_on() -> None:
    lease = Lease(run=RUN, granted=4, claimed=4, claimed_by=HOST_B)
    assert next_claim(lease, RUN, 4, HOST_B, NOW) is None and not lease.supersedes(4)


def test_a_newer_attempt_takes_the_run_and_names_its_host() -> None:
    lease = Lease(run=RUN, granted=4, claimed=3, claimed_by=HOST_A)
    taken = next_claim(lease, RUN, 4, HOST_B, NOW)
    assert taken is not None
    assert (taken.claimed, taken.claimed_by, taken.granted) == (4, HOST_B, 4)
    assert taken.claimed_at == "2026-11-30T06:02:00.000000Z" and taken.holder == f"attempt 4 on {HOST_B}"


def test_an_attempt_is_a_number_from_one() -> None:
    with pytest.raises(ValueError, match="from 1, got 0"):
        next_claim(None, RUN, 0, HOST_A, NOW)


# --------------------------------------------------------------------------- in the bucket


def test_grant_and_claim_write_the_lease_in_the_run_folder(moto_storage) -> None:
    assert read_lease(moto_storage, RUN) is None
    assert grant(moto_storage, RUN, to=HOST_A, now=NOW).granted == 1
    assert grant(moto_storage, RUN, to=HOST_B, now=NOW).granted == 2
    outcome = claim(moto_storage, RUN, 2, HOST_B, now=NOW)
    assert outcome.wrote and not outcome.superseded
    assert lease_key(moto_storage, RUN) == f"p/runs/{RUN}/lease.json"
    body = json.loads(moto_storage.client.get_object(Bucket=moto_storage.bucket, Key=f"p/runs/{RUN}/lease.json")
                      ["Body"].read())
    assert body == {"format": 1, "run": RUN, "granted": 2, "granted_at": "2026-11-30T06:02:00.000000Z",
                    "granted_to": HOST_B, "claimed": 2, "claimed_at": "2026-11-30T06:02:00.000000Z",
                    "claimed_by": HOST_B}


def test_an_older_attempt_that_starts_late_is_told_who_holds_the_run(moto_storage) -> None:
    grant(moto_storage, RUN, to=HOST_A)
    grant(moto_storage, RUN, to=HOST_B)
    assert claim(moto_storage, RUN, 2, HOST_B).wrote
    late = claim(moto_storage, RUN, 1, HOST_A)  # the replaced pod's training restarts after a crash
    assert late.superseded and not late.wrote
    assert late.message == (f"run {RUN} is held by attempt 2 on {HOST_B}; this training (attempt 1) is superseded: "
                            "it starts nothing and writes nothing")
    assert read_lease(moto_storage, RUN).claimed_by == HOST_B


def test_a_write_that_loses_a_race_reads_again_and_builds_on_the_winner(moto_storage) -> None:
    raced: list[int] = []

    def change(found: Lease | None) -> Lease:
        if not raced:  # another deploy writes between this read and this write
            raced.append(grant(moto_storage, RUN, to=HOST_B).granted)
        return next_grant(found, RUN, HOST_A, NOW)

    after = update_lease(moto_storage, RUN, change)
    assert raced == [1] and after is not None and after.granted == 2 and after.granted_to == HOST_A
    assert read_lease(moto_storage, RUN).granted == 2


def test_stores_without_conditional_writes_still_get_a_lease(moto_storage) -> None:
    refused: list[str] = []

    def no_conditions(params, **_) -> None:
        if "IfMatch" in params or "IfNoneMatch" in params:
            refused.append(params["Key"])
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "not here"}}, "PutObject")

    moto_storage.client.meta.events.register("before-parameter-build.s3.PutObject", no_conditions)
    assert grant(moto_storage, RUN, to=HOST_A).granted == 1
    assert grant(moto_storage, RUN, to=HOST_B).granted == 2
    assert claim(moto_storage, RUN, 2, HOST_B).wrote
    assert len(refused) == 3 and read_lease(moto_storage, RUN).claimed == 2


def test_a_lease_that_is_not_json_is_named(moto_storage) -> None:
    moto_storage.client.put_object(Bucket=moto_storage.bucket, Key=lease_key(moto_storage, RUN), Body=b"{oops")
    with pytest.raises(Exception, match=r"lease.json is not a lease"):
        read_lease(moto_storage, RUN)


# --------------------------------------------------------------------------- the fence


def put(storage, key: str, body: bytes = b"x") -> None:
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key(key), Body=body)


def test_writes_under_checkpoints_and_logs_are_refused_once_a_newer_attempt_claims(moto_storage) -> None:
    grant(moto_storage, RUN, to=HOST_A)
    claim(moto_storage, RUN, 1, HOST_A)
    fence(moto_storage, RUN, 1)
    put(moto_storage, "checkpoints/epoch=0-step=10.ckpt")  # attempt 1 holds the run: allowed
    started = moto_storage.client.create_multipart_upload(Bucket=moto_storage.bucket,
                                                          Key=moto_storage.key("checkpoints/big.ckpt"))
    part = moto_storage.client.upload_part(Bucket=moto_storage.bucket, Key=moto_storage.key("checkpoints/big.ckpt"),
                                           UploadId=started["UploadId"], PartNumber=1, Body=b"p" * 1024)

    grant(moto_storage, RUN, to=HOST_B)
    claim(moto_storage, RUN, 2, HOST_B)  # the replacement starts: attempt 1 is a zombie now

    for key in ("checkpoints/epoch=0-step=20.ckpt", "logs/version_0/events.out"):
        with pytest.raises(LeaseLost, match=rf"refused: run {RUN} is held by attempt 2 on {HOST_B}"):
            put(moto_storage, key)
    with pytest.raises(LeaseLost):  # the multipart upload begun before the claim cannot complete
        moto_storage.client.complete_multipart_upload(
            Bucket=moto_storage.bucket, Key=moto_storage.key("checkpoints/big.ckpt"), UploadId=started["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    with pytest.raises(LeaseLost):
        moto_storage.client.delete_object(Bucket=moto_storage.bucket,
                                          Key=moto_storage.key("checkpoints/epoch=0-step=10.ckpt"))
    put(moto_storage, f"runs/{RUN}/events/e.json")  # the run ledger is no checkpoint: not fenced
    names = {o.name for o in moto_storage.list(moto_storage.key("checkpoints") + "/")}
    assert names == {"epoch=0-step=10.ckpt"}


def test_check_names_the_attempt_and_host_that_hold_the_run(moto_storage) -> None:
    assert check(moto_storage, RUN, 1) is None  # no lease yet: nothing to refuse
    claim(moto_storage, RUN, 3, HOST_B)
    with pytest.raises(LeaseLost) as caught:
        check(moto_storage, RUN, 2, "s3://b/k")
    assert caught.value.line == f"gpu-deploy: superseded by attempt 3 on {HOST_B}; this training stops without " \
                                "writing to S3"


# --------------------------------------------------------------------------- the training side


@pytest.fixture
def fresh_stop():
    STOP.superseded_by = None
    yield STOP
    STOP.superseded_by = None


def test_a_refused_upload_is_not_retried_and_nothing_is_sent_after_it(fresh_stop, tmp_path: Path) -> None:
    sent: list[str] = []
    lease = Lease(run=RUN, granted=2, claimed=2, claimed_by=HOST_B)

    def transfer(job: UploadJob) -> None:
        sent.append(job.key)
        raise LeaseLost(lease, 1, job.key)

    files = []
    for name in ("a.ckpt", "b.ckpt"):
        (tmp_path / name).write_bytes(b"x")
        files.append(str(tmp_path / name))
    uploader = BackgroundUploader(refuse_when_superseded(transfer))
    uploader.submit(UploadJob(key="p/checkpoints/a.ckpt", path=files[0]))
    first = uploader.flush(10)
    uploader.submit(UploadJob(key="p/checkpoints/b.ckpt", path=files[1]))
    second = uploader.close(10)
    assert sent == ["p/checkpoints/a.ckpt"]  # tried once; b was never handed to the network
    assert fresh_stop.superseded_by == (2, HOST_B)
    assert len(first.failed) == 1 and "held by attempt 2" in first.failed[0]
    assert second.pending == 0 and any("b.ckpt" in f and "not sent" in f for f in second.failed)


def test_the_attempt_file_names_its_run_and_a_broken_one_is_no_attempt(tmp_path: Path) -> None:
    path = tmp_path / ATTEMPT_FILE
    assert read_attempt(path) is None
    path.parent.mkdir(parents=True)
    path.write_bytes(attempt_document(RUN, 4))
    assert read_attempt(path) == (RUN, 4)
    for broken in (b"{", b"[]", b'{"run": "r", "attempt": 0}', b'{"run": "", "attempt": 2}',
                   b'{"run": "r", "attempt": true}'):
        path.write_bytes(broken)
        assert read_attempt(path) is None, broken


def test_the_attempt_in_the_environment_needs_both_the_run_and_a_number() -> None:
    assert attempt_from_environment({"RUN_ID": RUN, "RUN_ATTEMPT": "3"}) == (RUN, 3)
    for env in ({"RUN_ID": RUN}, {"RUN_ATTEMPT": "3"}, {"RUN_ID": RUN, "RUN_ATTEMPT": "x"},
                {"RUN_ID": RUN, "RUN_ATTEMPT": "0"}):
        assert attempt_from_environment(env) is None, env


def test_the_run_ledger_s_readers_skip_the_lease_in_the_run_folder(moto_storage) -> None:
    from deploy.ledger.index import list_runs
    from deploy.ledger.model import Record, now
    from deploy.ledger.store import RunLedger, read_run

    ledger = RunLedger(moto_storage, RUN, writer="deploy")
    ledger.create(Record(run_id=RUN, created=now()))
    ledger.event("deployed", host=HOST_A)
    grant(moto_storage, RUN, to=HOST_A)
    claim(moto_storage, RUN, 1, HOST_A)
    run = read_run(moto_storage, RUN)
    assert run is not None and [e.kind for e in run.events] == ["deployed"] and run.unreadable == ()
    assert [r["run_id"] for r in list_runs(moto_storage)] == [RUN]
