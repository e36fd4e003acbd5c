"""Pipelines: chunk on the cpu pool feeds minilm on the gpu pool: one job, one result."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from aidist import JobStatus
from aidist.config import Settings
from aidist.errors import InvalidInput, JobFailed, UnknownModel
from db.store import JobStore
from models.ops import chunk_text
from producers import Client
from tests.conftest import aidist_command, settings_env

pytestmark = pytest.mark.e2e

DOCUMENT = " ".join(f"word{i} about queues and batching" for i in range(60))


def test_chunk_then_embed_returns_one_vector_per_chunk(workers: object, client: Client,
                                                       store: JobStore) -> None:
    job = client.pipeline(["chunk", "minilm"], DOCUMENT, {"chunk": {"size": 40, "overlap": 8}})
    vectors = job.result(timeout=120)
    chunks = chunk_text(DOCUMENT, size=40, overlap=8)
    assert len(vectors) == len(chunks) > 1
    direct = client.map("minilm", chunks, timeout=120)
    for via_pipeline, alone in zip(vectors, direct, strict=True):
        assert float(np.dot(via_pipeline, alone)) > 0.9999
    record = store.get(job.id)
    assert record.status is JobStatus.SUCCEEDED and record.target == "chunk>minilm"
    assert record.attempts == 1  # one run: its later steps continue it, no new attempt
    again = client.pipeline(["chunk", "minilm"], DOCUMENT, {"chunk": {"size": 40, "overlap": 8}})
    assert store.get(again.id).cache_hit


def test_three_steps_and_a_failing_step(workers: object, client: Client) -> None:
    tokens = client.pipeline(["normalize", "tokenize"], "  Hello\u00a0  PIPELINE ",
                             {"normalize": {"lowercase": True}}).result(timeout=60)
    assert tokens == client.preprocess("tokenize", "hello pipeline").result(timeout=60)
    failing = client.pipeline(["normalize", "flaky"], "this goes boom")
    with pytest.raises(JobFailed, match="flaky model refuses"):
        failing.result(timeout=60)


def test_pipeline_validation_happens_at_submit(client: Client) -> None:
    with pytest.raises(InvalidInput, match="at least two steps"):
        client.pipeline(["minilm"], "x")
    with pytest.raises(UnknownModel):
        client.pipeline(["chunk", "no-such-model"], "x")
    with pytest.raises(InvalidInput, match="size"):
        client.pipeline(["chunk", "minilm"], "x", {"chunk": {"size": 0}})
    with pytest.raises(InvalidInput, match="step names"):
        client.pipeline(["chunk", "minilm"], "x", {"tokenize": {}})
    with pytest.raises(InvalidInput):
        client.pipeline(["chunk", "minilm"], b"bytes")


def test_cli_submits_a_pipeline(workers: object, settings: Settings) -> None:
    done = subprocess.run(
        [aidist_command(), "submit", "normalize>tokenize", "  Two  STEPS ", "--params",
         '{"normalize": {"lowercase": true}}'],
        capture_output=True, text=True, env=settings_env(settings),
        timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(x) for x in done.stdout.splitlines() if x.strip()]
    assert line["status"] == "succeeded" and line["result"][0] == 101
