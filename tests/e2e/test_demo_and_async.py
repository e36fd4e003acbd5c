"""The demo as a user runs it, and the AsyncClient against real workers."""

from __future__ import annotations

import asyncio
import re
import subprocess

import pytest

from aidist import JobStatus
from aidist.config import Settings
from aidist.errors import JobFailed
from db.cache import ResultCache
from producers import AsyncClient
from tests.conftest import aidist_command, delete_queues, make_settings, settings_env

pytestmark = pytest.mark.e2e


def test_demo_runs_end_to_end_and_second_pass_is_all_cache_hits(settings: Settings) -> None:
    # its own namespace, so only the demo's own workers serve its jobs
    demo_settings = make_settings(**{**settings.model_dump(),
                                     "namespace": f"{settings.namespace}d"})
    done = subprocess.run(
        [aidist_command(), "demo", "--sentences", "200", "--preprocess", "30", "--seed", "7"],
        capture_output=True, text=True, env={**settings_env(demo_settings), "COLUMNS": "120"},
        timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    assert "200/200" in text and "30/30" in text and "8/8" in text
    assert re.search(r"\d+ sentences/s", text)
    assert "classified 8 PNGs through image>toy-vision" in text
    rows = {m.group(1): (int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"│ ([a-z ]+?)\s+│\s+(\d+) │\s+(\d+) │", text)}
    assert rows["succeeded"] == (238, 238)  # 200 + 30 + 8 synthetic PNGs
    assert rows["cache hits"] == (0, 238)
    assert rows["ran on a worker"] == (238, 0)
    assert "results identical to pass 1: True" in text
    assert text.count("worker stopped (exit code 0)") == 2
    assert "other workers also consume" not in text
    delete_queues(demo_settings)
    ResultCache.connect(demo_settings.redis_url, demo_settings.namespace).delete_namespace()


def test_async_client_mirrors_the_sync_calls(workers: object, settings: Settings) -> None:
    async def scenario() -> None:
        async with AsyncClient(settings) as client:
            job = await client.infer("flaky", "async hello")
            assert await job.result(timeout=60) == len("async hello")
            assert await job.status() is JobStatus.SUCCEEDED and await job.done()
            jobs = await client.infer_many("flaky", ["a", "bb", "boom"])
            finished = [j.id async for j in client.as_completed(jobs, timeout=60)]
            assert sorted(finished) == sorted(j.id for j in jobs)
            with pytest.raises(JobFailed):
                await jobs[2].result(timeout=5)
            assert await client.map("normalize", [" x  y "]) == ["x y"]
            same = await client.get(job.id)
            assert await same.result(timeout=5) == len("async hello")
            tokens = await client.preprocess("tokenize", "hi")
            assert (await tokens.result(timeout=60))[0] == 101

    asyncio.run(scenario())
