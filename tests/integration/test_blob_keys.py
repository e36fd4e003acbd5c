"""jobs.blob_keys (migration 0008): a row records the blobs its payload and its result refer
to, its followers take its leader's, and the store answers which keys rows still reference."""

from __future__ import annotations

import uuid

from aidist.codec import BlobRef
from aidist.jobs import JobKind, JobStatus
from db.records import ClaimRequest, NewJob, Outcome
from db.store import JobStore


def new_job(cache_key: str, blob_keys: tuple[str, ...] = ()) -> NewJob:
    return NewJob(id=str(uuid.uuid4()), kind=JobKind.INFER, target="toy-classifier",
                  version="1", cache_key=cache_key, payload=b"\x01", blob_keys=blob_keys)


def test_rows_record_input_and_output_blobs_and_followers_take_them(store: JobStore) -> None:
    key = uuid.uuid4().hex
    input_blob = BlobRef.of(key.encode() + b"input").key
    output_blob = BlobRef.of(key.encode() + b"output").key
    leader, follower, small = new_job(key, (input_blob,)), new_job(key, (input_blob,)), \
        new_job(uuid.uuid4().hex)
    store.insert_jobs([leader, follower, small])
    assert store.blob_keys_referenced([input_blob, output_blob]) == {input_blob}
    claims = {c.id: c for c in store.claim([ClaimRequest(leader.id)], "w1")}
    claims.update({c.id: c for c in store.claim([ClaimRequest(follower.id),
                                                 ClaimRequest(small.id)], "w2")})
    assert claims[follower.id].follows == leader.id
    store.finish([Outcome(leader.id, claims[leader.id].attempt, JobStatus.SUCCEEDED,
                          result=b"ref", blob_key=output_blob),
                  Outcome(small.id, claims[small.id].attempt, JobStatus.SUCCEEDED,
                          result=b"inline")])
    assert store.get(follower.id).status is JobStatus.SUCCEEDED
    assert store.blob_keys_referenced([input_blob, output_blob, "0" * 64]) == {
        input_blob, output_blob}
    with store.engine.connect() as connection:
        rows = dict(connection.exec_driver_sql(
            "SELECT id::text, blob_keys FROM jobs WHERE id = ANY(%(ids)s::uuid[])",
            {"ids": [leader.id, follower.id, small.id]}).all())
    assert rows == {leader.id: [input_blob, output_blob], follower.id: [input_blob, output_blob],
                    small.id: None}
