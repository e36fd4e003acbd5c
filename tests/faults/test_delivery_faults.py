"""Fault scenarios 6 to 8: poison (a model that raises, one that hangs past the time limit,
undecodable, pickled and row-less messages, oversize inputs), duplicate deliveries, and a client
killed between writing its jobs and publishing them."""

from __future__ import annotations

import pickle
import subprocess
import sys
import uuid

import msgpack
import pytest

from aidist.errors import InvalidInput
from aidist.jobs import JobEntry, JobKind, JobStatus, cache_key
from aidist.transport import Publisher, dead_letter_queue
from db import NewJob
from producers import Client
from tests.conftest import REPO, publish_raw, queue_depth, settings_env, wait_for
from tests.faults.conftest import record
from tests.faults.harness import Scenario, queue_messages, unique_inputs

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.timeout(600)]


def _entry(scenario: Scenario, job_id: str, text: str, key: str | None = None) -> JobEntry:
    version = scenario.client.registry.version("logged")
    key = key or cache_key(JobKind.INFER, "logged", version, {}, text.encode())
    return JobEntry(job_id, JobKind.INFER, "logged", version, text, key)


def test_poison_inputs_and_messages(scenario: Scenario) -> None:
    scenario.gpu_worker()
    queue = scenario.queue("logged")
    scenario.consumers(queue, 1)
    good = unique_inputs("good", 300)
    boom = unique_inputs("boom", 5)
    hang = unique_inputs("hang", 2)
    jobs = scenario.client.submit_many("logged", good[:150] + boom + hang + good[150:])

    with pytest.raises(InvalidInput, match="characters, the limit is"):
        scenario.client.submit_many("logged", ["x" * (scenario.settings.max_input_chars + 1)])
    # around the client: an oversize input for a real row, a message for a row that does not
    # exist, an undecodable body, a pickled one
    oversize = str(uuid.uuid4())
    text = "y" * (scenario.settings.max_input_chars + 1)
    row = _entry(scenario, oversize, text)
    scenario.store.insert_jobs([NewJob(oversize, JobKind.INFER, "logged", row.version,
                                       row.cache_key, b"\xa1y")])
    scenario.store.mark_sent([oversize])
    publisher = Publisher(scenario.settings.broker_url, scenario.settings.namespace)
    publisher.publish(queue, [row.to_wire()])
    publisher.publish(queue, [_entry(scenario, str(uuid.uuid4()), "no row").to_wire()])
    publisher.close()
    publish_raw(scenario.settings, queue, b"\xc1\xff not msgpack", "application/x-msgpack")
    publish_raw(scenario.settings, queue, pickle.dumps(([["x"]], {}, {})),
                "application/x-python-serialize")
    publish_raw(scenario.settings, queue, msgpack.packb([["junk"], {}, {}]),
                "application/x-msgpack")

    tally = record(scenario.tally("6. poison", bound_s=240))
    assert tally.lost == 0 and tally.executed_twice == 0
    assert tally.submitted == len(jobs) + 1
    assert tally.succeeded == len(good)
    assert tally.failed == len(boom) + len(hang) + 1
    records = scenario.store.get_many([job.id for job in jobs] + [oversize])
    for job, text in zip(jobs, good[:150] + boom + hang + good[150:], strict=True):
        error = records[job.id].error or ""
        if text.startswith("boom"):
            assert "logged model refuses" in error
        elif text.startswith("hang"):
            assert "gave up after 3 attempts" in error
    assert "characters, the limit is" in (records[oversize].error or "")
    assert scenario.fleet.restarts >= 1  # the hanging model ended processes (the watchdog)
    dead = dead_letter_queue(scenario.settings.namespace)
    # the row-less, undecodable, pickled and malformed messages, and the two hanging jobs'
    # messages once their attempts ran out
    wait_for(lambda: queue_depth(scenario.settings, dead) == 6, timeout=60,
             message="six messages dead-lettered")
    scenario.check_results([j for j, t in zip(jobs, good[:150] + boom + hang + good[150:],
                                              strict=True) if t.startswith("good")], good)


def test_duplicate_deliveries_run_each_job_once(scenario: Scenario) -> None:
    scenario.gpu_workers(2)
    queue = scenario.queue("logged")
    inputs = unique_inputs("dup", 1500)
    publisher = Publisher(scenario.settings.broker_url, scenario.settings.namespace)
    jobs = []
    for start in range(0, len(inputs), 100):
        part = inputs[start : start + 100]
        batch = scenario.client.submit_many("logged", part)
        jobs.extend(batch)
        # the same jobs published again at once: both copies are in flight together
        publisher.publish(queue, [_entry(scenario, j.id, t, j.cache_key).to_wire()
                                  for j, t in zip(batch, part, strict=True)])
    tally_live = scenario.tally("7. duplicate delivery", bound_s=240)
    assert tally_live.succeeded == len(inputs)
    # and once more after the results are stored: plain duplicates and broker redeliveries
    for start in range(0, len(inputs), 100):
        wires = [_entry(scenario, j.id, t, j.cache_key) for j, t in
                 zip(jobs[start : start + 100], inputs[start : start + 100], strict=True)]
        publisher.publish(queue, [w.to_wire() for w in wires])
        publisher.publish(queue, [w.taking_over().to_wire() for w in wires])
    publisher.close()
    wait_for(lambda: queue_messages(queue) == 0, timeout=120,
             message="every duplicate consumed and acked")
    tally = record(scenario.tally("7. duplicate delivery", bound_s=60))
    assert tally.lost == 0
    assert tally.executed_twice == 0 and tally.reruns == 0
    assert scenario.log.count() == len(inputs)  # each input ran exactly once
    assert tally.succeeded == tally.submitted == len(inputs)
    assert queue_depth(scenario.settings, dead_letter_queue(scenario.settings.namespace)) == 0
    scenario.check_results(jobs, inputs)


def test_identical_jobs_in_flight_run_once(scenario: Scenario) -> None:
    # one message in hand each: the twins go to the worker that is free
    scenario.gpu_workers(2, env={"AIDIST_BATCH_PREFETCH": "1", "AIDIST_JOB_TIME_LIMIT_S": "60"})
    inputs = unique_inputs("gate", 4)  # their batch runs until the gate opens
    first = scenario.client.submit_many("logged", inputs)
    wait_for(lambda: all(scenario.store.get(j.id).status is JobStatus.RUNNING for j in first),
             timeout=60, message="the first copies to be running")
    with Client(scenario.settings) as other:  # another application submits the same inputs
        twins = other.submit_many("logged", inputs)
        wait_for(lambda: all(r.follows for r in scenario.store.get_many(
                     [t.id for t in twins]).values()),
                 timeout=60, message="the twins to follow the running copies")
        scenario.open_gate()
        assert other.results_of(twins, timeout=60) == [f"done:{text}" for text in inputs]
    tally = record(scenario.tally("7b. identical jobs in flight", bound_s=60))
    assert tally.lost == 0 and tally.executed_twice == 0 and tally.reruns == 0
    assert tally.succeeded == tally.submitted == 2 * len(inputs)
    assert scenario.log.count() == len(inputs)  # the twins took the running jobs' results
    records = scenario.store.get_many([job.id for job in twins])
    assert {records[twin.id].follows for twin in twins} == {job.id for job in first}
    scenario.check_results(first, inputs)


@pytest.mark.parametrize("point", ["before-publish", "after-publish"])
def test_a_client_killed_between_writing_and_sending(scenario: Scenario, point: str) -> None:
    count = 400
    done = subprocess.run([sys.executable, "-m", "tests.faults.dying_client", point, str(count)],
                          env=settings_env(scenario.settings), cwd=REPO, timeout=120,
                          capture_output=True, check=False)
    assert done.returncode == 9, done.stderr.decode()[-2000:]
    before = scenario.store.count_by_status()
    assert before[JobStatus.QUEUED] == count  # written, and the client is gone
    scenario.gpu_worker()  # its sweeper finds the unsent rows
    tally = record(scenario.tally(f"8. client killed {point}", bound_s=120))
    assert tally.lost == 0
    assert tally.executed_twice == 0 and tally.reruns == 0
    assert tally.succeeded == tally.submitted == count
    assert scenario.log.count() == count
