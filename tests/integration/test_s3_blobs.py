"""The S3 blob store against a real S3-compatible server (SeaweedFS, real credentials): round
trips, identical payloads uploaded once, the standard AWS variables honoured, and a server that
is down or refuses the credentials is a ServiceUnavailable naming the blob store."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from aidist.codec import BlobRef
from aidist.errors import ServiceUnavailable
from db.blobs import S3BlobStore, open_blob_store
from tests.conftest import free_port
from tests.seaweed import SeaweedS3


def store_for(server: SeaweedS3, prefix: str, secret_key: str | None = None) -> S3BlobStore:
    """A store on the server with the tests' own client (explicit credentials)."""
    return S3BlobStore(server.client(secret_key), server.bucket, prefix,
                       f"s3://{server.bucket}/{prefix}")


def objects_under(server: SeaweedS3, prefix: str) -> list[str]:
    listed: dict[str, Any] = server.client().list_objects_v2(  # type: ignore[attr-defined]
        Bucket=server.bucket, Prefix=prefix + "/")
    return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def s3_blobs(s3_server: SeaweedS3, prefix: str) -> Iterator[S3BlobStore]:
    store = store_for(s3_server, prefix)
    yield store
    store.close()


def test_put_get_delete_round_trip(s3_blobs: S3BlobStore, s3_server: SeaweedS3,
                                   prefix: str) -> None:
    big = os.urandom(20 * 1024 * 1024)
    payloads = [big, b"small", b""]
    refs = s3_blobs.put_many(payloads)
    assert refs == [BlobRef.of(p) for p in payloads]
    assert objects_under(s3_server, prefix) == sorted(
        f"{prefix}/{r.key[:2]}/{r.key}" for r in refs)
    found = s3_blobs.get_many([r.key for r in refs] + ["0" * 64])
    assert found == {r.key: p for r, p in zip(refs, payloads, strict=True)}
    assert s3_blobs.exists(refs[1].key)
    assert s3_blobs.delete([refs[0].key, refs[1].key, "0" * 64]) == 2
    assert not s3_blobs.exists(refs[0].key)
    assert objects_under(s3_server, prefix) == [f"{prefix}/{refs[2].key[:2]}/{refs[2].key}"]


def test_identical_payloads_are_uploaded_once(s3_blobs: S3BlobStore, s3_server: SeaweedS3,
                                              prefix: str) -> None:
    uploads: list[str] = []
    s3_blobs.client.meta.events.register(
        "before-call.s3.PutObject", lambda params, **_: uploads.append(params["url_path"]))
    data = os.urandom(400_000)
    refs = [s3_blobs.put(data), s3_blobs.put(bytes(data)), *s3_blobs.put_many([data, data])]
    assert len(set(refs)) == 1
    assert len(uploads) == 1
    assert len(objects_under(s3_server, prefix)) == 1


def test_delete_spares_blobs_written_within_the_grace(s3_blobs: S3BlobStore) -> None:
    ref = s3_blobs.put(b"fresh")
    assert s3_blobs.delete([ref.key], older_than_s=3600) == 0
    assert s3_blobs.exists(ref.key)
    assert s3_blobs.delete([ref.key]) == 1


def test_the_standard_aws_variables_are_honoured(s3_server: SeaweedS3, prefix: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    store = open_blob_store(f"s3://{s3_server.bucket}/{prefix}")
    try:
        ref = store.put(b"through AWS_ENDPOINT_URL")
        assert store.get_many([ref.key]) == {ref.key: b"through AWS_ENDPOINT_URL"}
        assert s3_server.endpoint in store.url
    finally:
        store.close()


def test_refused_credentials_are_service_unavailable_naming_the_blob_store(
        s3_server: SeaweedS3, prefix: str) -> None:
    store = store_for(s3_server, prefix, secret_key="not-the-secret")
    with pytest.raises(ServiceUnavailable, match="blob store") as caught:
        store.put(b"data")
    assert f"s3://{s3_server.bucket}/{prefix}" in str(caught.value)
    assert "not-the-secret" not in str(caught.value)
    assert isinstance(caught.value.__cause__, ClientError)
    assert objects_under(s3_server, prefix) == []


def test_a_missing_bucket_says_to_create_it(s3_server: SeaweedS3) -> None:
    store = S3BlobStore(s3_server.client(), "no-such-bucket-here", "p",
                        "s3://no-such-bucket-here/p")
    with pytest.raises(ServiceUnavailable, match="create bucket 'no-such-bucket-here'"):
        store.put(b"data")


def test_a_server_that_is_down_is_service_unavailable_naming_it(
        monkeypatch: pytest.MonkeyPatch, s3_server: SeaweedS3) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    for name, value in {**s3_server.env, "AWS_ENDPOINT_URL": down}.items():
        monkeypatch.setenv(name, value)
    store = open_blob_store("s3://aidist-tests/down", connect_timeout_s=1.0)
    for call in (lambda: store.put(b"data"), lambda: store.get_many(["0" * 64]),
                 lambda: store.delete(["0" * 64])):
        with pytest.raises(ServiceUnavailable, match="blob store") as caught:
            call()
        assert "s3://aidist-tests/down" in str(caught.value)
        assert down in str(caught.value)
        assert isinstance(caught.value.__cause__, BotoCoreError)
    store.close()
