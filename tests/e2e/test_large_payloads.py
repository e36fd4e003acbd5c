"""Large payloads through a real worker process and a real S3-compatible store (SeaweedFS with
real credentials), configured as a user would: AIDIST_BLOB_URL=s3://bucket/prefix and the
standard AWS_* variables, in the client's environment and the worker's. A 20 MB input and its
20 MB output come back byte-identical; a cache hit on the large output reads the blob instead
of running the model again; a blob store that is down fails the submit, naming it, with no row
written."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from aidist import codec
from aidist.codec import BlobRef
from aidist.config import Settings
from aidist.errors import ServiceUnavailable
from aidist.jobs import JobKind
from aidist.transport import queue_name
from db.cache import ResultCache
from db.store import JobStore
from producers import Client
from tests.conftest import WorkerProcess, free_port, queue_depth, start_worker
from tests.seaweed import SeaweedS3

SIZE = 20 * 1024 * 1024
TARGET = "large-echo"


@pytest.fixture(scope="module")
def s3_settings(settings: Settings, s3_server: SeaweedS3) -> Iterator[Settings]:
    """The session's database, a namespace of its own, blobs in the S3 server; the AWS_*
    variables set in this process (so the client and the worker it starts both see them)."""
    namespace = f"blob{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.env.items():
            env.setenv(name, value)
        yield settings.model_copy(update={
            "namespace": namespace, "blob_url": f"s3://{s3_server.bucket}/{namespace}"})


@pytest.fixture(scope="module")
def blob_worker(s3_settings: Settings, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[WorkerProcess]:
    worker = start_worker(s3_settings, "gpu", tmp_path_factory.mktemp("blob-worker"),
                          "--models", TARGET, serving=[TARGET])
    yield worker
    worker.stop()


def objects(server: SeaweedS3, prefix: str) -> set[str]:
    listed: dict[str, Any] = server.client().list_objects_v2(  # type: ignore[attr-defined]
        Bucket=server.bucket, Prefix=prefix + "/")
    return {item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", [])}


def blob_keys(store: JobStore, job_id: str) -> list[str] | None:
    with store.engine.connect() as connection:
        keys: list[str] | None = connection.execute(
            text("SELECT blob_keys FROM jobs WHERE id = CAST(:id AS uuid)"), {"id": job_id}
        ).scalar_one()
    return keys


def test_a_20_mb_input_and_output_go_through_s3_and_a_cache_hit_reads_the_blob(
        s3_settings: Settings, blob_worker: WorkerProcess, s3_server: SeaweedS3,
        store: JobStore) -> None:
    data = os.urandom(SIZE)
    in_ref, out_ref = BlobRef.of(codec.encode(data)), BlobRef.of(codec.encode(data[::-1]))
    with Client(s3_settings) as client:
        job = client.infer(TARGET, data)
        assert job.result(timeout=120) == data[::-1]
    assert {in_ref.key, out_ref.key} <= objects(s3_server, s3_settings.namespace)
    assert blob_keys(store, job.id) == [in_ref.key, out_ref.key]
    cache = ResultCache.connect(s3_settings.redis_url, s3_settings.namespace)
    try:
        assert cache.get_many([job.cache_key]) == [codec.encode(out_ref)]  # Redis: the reference

        with Client(s3_settings) as again_client:  # a cache hit: nothing is sent or run
            again = again_client.infer(TARGET, data)
            assert again_client.results_of([again], timeout=60) == [data[::-1]]
        record = store.get(again.id)
        assert record.cache_hit and record.attempts == 0
        assert out_ref.key in (blob_keys(store, again.id) or [])

        cache.client.delete(cache.result_key(job.cache_key))  # Redis lost it: the durable copy
        with Client(s3_settings) as reader:
            assert reader.results_of([reader.get(job.id)], timeout=60) == [data[::-1]]
    finally:
        cache.close()
    assert store.get(job.id).attempts == 1  # the model ran once, for the first job only
    assert queue_depth(s3_settings, queue_name(s3_settings.namespace, job.kind, TARGET)) == 0


def test_a_blob_store_that_is_down_fails_the_submit_naming_it_with_nothing_written(
        s3_settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", down)
    before = sum(store.count_by_status().values())
    with Client(s3_settings) as client:
        with pytest.raises(ServiceUnavailable, match="blob store") as caught:
            client.infer(TARGET, os.urandom(1024 * 1024))
        assert s3_settings.blob_url is not None and s3_settings.blob_url in str(caught.value)
        assert down in str(caught.value)
        assert sum(store.count_by_status().values()) == before
        queue = queue_name(s3_settings.namespace, JobKind.INFER, TARGET)
        assert queue_depth(s3_settings, queue) == 0
        small = client.infer(TARGET, b"inline")  # what stays inline needs no blob store
        assert sum(store.count_by_status().values()) == before + 1
        small.cancel()
