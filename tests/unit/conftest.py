"""Fixtures for pure unit tests: moto's in-process S3 (``mock_aws``), never a server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

MOCK_BUCKET = "unit-bucket"


@pytest.fixture
def moto_storage() -> Iterator[object]:
    """A real :class:`deploy.storage.Storage` (prefix ``p``) on moto's in-process S3."""
    moto = pytest.importorskip("moto")
    import boto3

    from deploy.storage import Storage

    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        client.create_bucket(Bucket=MOCK_BUCKET)
        yield Storage(client, MOCK_BUCKET, "p")
