"""Which unfinished multipart uploads count as stale: pure logic over a fake listing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from deploy.storage.uploads import StaleUpload, abort_uploads, stale_uploads

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


class FakeStorage:
    """The two calls the upload cleanup makes, over a list."""

    def __init__(self, uploads: list[dict]) -> None:
        self.uploads = uploads
        self.prefixes: list[str] = []
        self.aborted: list[tuple[str, str]] = []

    def multipart_uploads(self, prefix: str) -> list[dict]:
        self.prefixes.append(prefix)
        return [u for u in self.uploads if u["key"].startswith(prefix)]

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.aborted.append((key, upload_id))


def upload(key: str, minutes_ago: int | None) -> dict:
    initiated = None if minutes_ago is None else NOW - timedelta(minutes=minutes_ago)
    return {"key": key, "upload_id": f"id-{key}", "initiated": initiated}


def test_only_uploads_older_than_the_grace_period_under_the_prefix_are_stale() -> None:
    storage = FakeStorage([upload("p/checkpoints/a.ckpt", 120), upload("p/logs/events", 5),
                           upload("p/docker-images/layers/x", None), upload("other/y", 999)])
    stale = stale_uploads(storage, "p", timedelta(hours=1), now=NOW)  # type: ignore[arg-type]
    assert storage.prefixes == ["p/"]  # "p/", so "p2/..." is never included
    assert [u.key for u in stale] == ["p/checkpoints/a.ckpt", "p/docker-images/layers/x"]  # unknown age: stale
    assert abort_uploads(storage, stale) == 2  # type: ignore[arg-type]
    assert storage.aborted == [("p/checkpoints/a.ckpt", "id-p/checkpoints/a.ckpt"),
                               ("p/docker-images/layers/x", "id-p/docker-images/layers/x")]


def test_a_stale_upload_prints_its_key_start_and_id() -> None:
    line = StaleUpload("p/logs/events", "0123456789abcdefXYZ", NOW).describe()
    assert line == "  p/logs/events  started 2026-01-01 12:00 UTC  0123456789abcdef"
    assert "unknown time" in StaleUpload("k", "id", None).describe()
