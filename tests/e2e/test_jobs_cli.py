"""`aidist jobs ls/show/tail` run as a user would: subprocesses against the session's workers,
reading the history the triggers on ``jobs`` record."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import time
import uuid
from datetime import datetime
from typing import Any, cast

import pytest

from aidist.config import Settings
from aidist.jobs import JobStatus
from producers import Client
from tests.conftest import REPO, aidist_command, delete_queues, make_settings, settings_env

pytestmark = pytest.mark.e2e


def _run(settings: Settings, *args: str, stdin: str | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([aidist_command(), *args], input=stdin, capture_output=True, text=True,
                          env=settings_env(settings), timeout=timeout, check=False)


def _submit(settings: Settings, *texts: str) -> list[str]:
    """Submit fresh ``normalize`` jobs (never cached: unique texts), wait, return their ids."""
    done = _run(settings, "submit", "normalize", "-", stdin="".join(f"{t}\n" for t in texts))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [line["status"] for line in lines] == ["succeeded"] * len(texts)
    return [str(line["id"]) for line in lines]


def _start_tail(settings: Settings, *args: str) -> subprocess.Popen[str]:
    """Start `aidist jobs tail ARGS` and wait for its line on stderr saying where it starts:
    what is written after that is what it must see."""
    tail = subprocess.Popen([aidist_command(), "jobs", "tail", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=settings_env(settings),
                            cwd=REPO)
    assert tail.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(tail.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                tail.kill()
                pytest.fail("aidist jobs tail did not start within 60 s")
    started = tail.stderr.readline()
    assert "following job transitions after #" in started, started
    return tail


def test_ls_json_filters_by_status_and_target(workers: object, settings: Settings) -> None:
    (job_id,) = _submit(settings, f"  Listed {uuid.uuid4().hex} ")
    listed = _run(settings, "jobs", "ls", "--json", "--status", "succeeded", "--target",
                  "normalize", "--since", "10m", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    jobs = cast(list[dict[str, Any]], json.loads(listed.stdout))
    assert job_id in {job["id"] for job in jobs}
    assert {(job["status"], job["target"]) for job in jobs} == {("succeeded", "normalize")}
    until = _run(settings, "jobs", "ls", "--json", "--target", "normalize", "--until", "1h")
    assert until.returncode == 0, until.stderr
    assert job_id not in {job["id"] for job in json.loads(until.stdout)}


def test_show_json_has_the_history_and_the_table_shows_it(workers: object,
                                                          settings: Settings) -> None:
    (job_id,) = _submit(settings, f"Shown {uuid.uuid4().hex}")
    shown = _run(settings, "jobs", "show", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert (job["id"], job["status"], job["attempts"]) == (job_id, "succeeded", 1)
    history = job["history"]
    assert [event["status"] for event in history] == ["queued", "running", "succeeded"]
    assert history[0]["worker"] is None
    assert history[1]["worker"] == history[2]["worker"] == job["worker"]
    assert job["worker"]
    assert [event["attempt"] for event in history] == [0, 1, 1]
    times = [datetime.fromisoformat(event["at"]) for event in history]
    assert times == sorted(times)
    assert job["queue_s"] >= 0 and job["run_s"] >= 0

    table = _run(settings, "jobs", "show", job_id)
    assert table.returncode == 0, table.stderr
    for text in ("history", "queue wait", "run time", "running", job["worker"]):
        assert text in table.stdout, text


def test_tail_json_sees_the_transitions_of_jobs_submitted_while_it_runs(
        workers: object, settings: Settings) -> None:
    tail = _start_tail(settings, "--json", "--target", "normalize", "--limit-events", "6")
    try:
        ids = _submit(settings, f"Tailed {uuid.uuid4().hex}", f"Tailed {uuid.uuid4().hex}")
        out, err = tail.communicate(timeout=60)  # it ends by itself after 6 transitions
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(events) == 6
    assert sorted((e["job_id"], e["status"]) for e in events) == sorted(
        (job_id, status) for job_id in ids for status in ("queued", "running", "succeeded"))
    assert {e["target"] for e in events} == {"normalize"}
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert all(e["worker"] for e in events if e["status"] != "queued")


def test_tail_stops_cleanly_on_sigterm(settings: Settings) -> None:
    tail = _start_tail(settings)
    tail.send_signal(signal.SIGTERM)
    try:
        _, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    assert "Traceback" not in err


def test_unknown_job_and_bad_time_are_one_line_errors(settings: Settings) -> None:
    missing = _run(settings, "jobs", "show", str(uuid.uuid4()), "--json")
    assert missing.returncode == 2
    assert "no job with id" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad = _run(settings, "jobs", "ls", "--since", "yesterday")
    assert bad.returncode == 2
    assert "neither a duration" in bad.stderr and "Traceback" not in bad.stderr


def test_cancel_stops_a_queued_job_and_says_when_one_had_finished(settings: Settings) -> None:
    """`aidist jobs cancel`, what the docs point to instead of Celery's revoke: a job whose queue
    no worker consumes (a namespace of its own) stays queued until cancelled."""
    own = make_settings(**{**settings.model_dump(), "namespace": f"cx{uuid.uuid4().hex[:8]}"})
    with Client(own) as client:
        job = client.infer("toy-classifier", f"never run {uuid.uuid4().hex}")
        try:
            assert job.status() is JobStatus.QUEUED
            first = _run(own, "jobs", "cancel", job.id)
            assert first.returncode == 0, first.stderr
            assert first.stdout.split() == [job.id, "cancelled"]
            assert job.status() is JobStatus.CANCELLED
            again = _run(own, "jobs", "cancel", job.id)
            assert again.returncode == 0 and "had finished" in again.stdout
        finally:
            delete_queues(own)
