"""Worker logs as a log shipper reads them (AIDIST_LOG_FORMAT=json): one JSON object per line,
one line per batch with its id, model, size and time, and the job id on a line about a job."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from aidist.config import Settings
from aidist.jobs import JobStatus
from producers import Client
from tests.conftest import make_settings, start_worker, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("pool", ["cpu", "gpu"])
def test_json_logs_have_a_line_per_batch_and_job_ids(settings: Settings, tmp_path: Path,
                                                     pool: str) -> None:
    own = make_settings(**{**settings.model_dump(), "log_format": "json",
                           "namespace": f"lg{uuid.uuid4().hex[:8]}"})
    target = "logged-cpu" if pool == "cpu" else "flaky"
    worker = start_worker(own, pool, tmp_path, "--models", target,
                          *(["--concurrency", "1"] if pool == "cpu" else []), serving=[target])
    client = Client(own)
    try:
        good, bad = client.submit_many(target, ["fine", "boom!"])
        wait_for(lambda: good.done() and bad.done(), timeout=60, message="both jobs to end")
        assert bad.status() is JobStatus.FAILED

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in worker.log().splitlines()
                    if line.startswith("{")]

        def batch_line() -> list[dict[str, Any]]:
            return [line for line in lines() if line.get("batch") and line.get("jobs") == 2]

        (batch,) = wait_for(batch_line, timeout=30, message="the batch's log line")
        assert batch["target"] == target
        assert (batch["succeeded"], batch["failed"]) == (1, 1)
        assert batch["ms"] >= 0 and batch["level"] == "info"
        about_bad = [line for line in lines() if line.get("job_id") == bad.id]
        assert about_bad and bad.id in about_bad[0]["message"]
        assert not [line for line in lines() if line.get("job_id") == good.id]
    finally:
        client.close()
        worker.stop()
    # every line the worker wrote is one JSON object (Celery's own log lines included), but
    # the shutdown notice Celery prints straight to the terminal from its signal handler
    plain = [line for line in worker.log().splitlines()
             if line.strip() and not line.startswith("{")]
    assert plain == ["worker: Warm shutdown (MainProcess)"]
