"""`aidist db prune`, run as a user would: it deletes the finished jobs past the retention and
says how many, leaves the others, and refuses a retention that is off or too short."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import make_url, text

from aidist.config import Settings
from aidist.jobs import JobKind, JobStatus
from db import setup as db_setup
from db.records import NewJob
from db.store import JobStore
from tests.conftest import aidist_command, make_settings, settings_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def isolated(settings: Settings) -> Iterator[Settings]:
    """Settings on a database of this test's own (a prune deletes every old row there is)."""
    name = f"aidist_prune_cli_{uuid.uuid4().hex[:10]}"
    url = make_url(settings.database_url).set(database=name).render_as_string(
        hide_password=False)
    db_setup.upgrade(url)
    yield make_settings(database_url=url, namespace=settings.namespace)
    db_setup.drop_database(url)


def _prune(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aidist_command(), "db", "prune", *args], capture_output=True,
                          text=True, env={**settings_env(settings), **env}, timeout=120,
                          check=False)


def _job(status: JobStatus) -> NewJob:
    return NewJob(str(uuid.uuid4()), JobKind.INFER, "toy-classifier", "v", uuid.uuid4().hex,
                  b"\xa1x", status=status)


def test_db_prune_deletes_old_finished_jobs_and_keeps_the_rest(isolated: Settings) -> None:
    store = JobStore.connect(isolated.database_url)
    try:
        old = [_job(JobStatus.SUCCEEDED) for _ in range(3)]
        waiting = _job(JobStatus.QUEUED)
        recent = _job(JobStatus.SUCCEEDED)
        store.insert_jobs([*old, waiting, recent])
        with store.engine.begin() as connection:
            connection.execute(text(
                "UPDATE jobs SET created_at = created_at - interval '2 days', "
                "finished_at = finished_at - interval '2 days' WHERE id = ANY(:ids)"),
                {"ids": [uuid.UUID(j.id) for j in [*old, waiting]]})

        done = _prune(isolated, "--older-than", "86400", "--batch", "2")
        assert done.returncode == 0, done.stderr
        assert "pruned 3 finished job(s) that ended over 86400s ago, with 3 history row(s)" \
            in done.stdout
        assert store.existing([j.id for j in old]) == set()
        assert store.existing([waiting.id, recent.id]) == {waiting.id, recent.id}
    finally:
        store.close()


def test_db_prune_refuses_a_retention_that_is_off_or_too_short(isolated: Settings) -> None:
    short = _prune(isolated, "--older-than", "5")
    assert short.returncode == 2
    assert "--older-than must be at least 60 seconds" in short.stderr
    off = _prune(isolated, AIDIST_RETENTION_S="0")
    assert off.returncode == 2
    assert "AIDIST_RETENTION_S is 0" in off.stderr
