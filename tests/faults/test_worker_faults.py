"""Fault scenarios 1 and 2: worker processes killed (SIGKILL) or stopped (SIGTERM) in the middle of
batches while jobs keep coming. Nothing may be lost, nothing run twice beyond the batch a killed
process had in hand."""

from __future__ import annotations

import pytest

from tests.faults.conftest import record
from tests.faults.harness import Producer, Scenario, unique_inputs, when

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.timeout(600)]


def test_sigkill_gpu_workers_in_the_middle_of_batches(scenario: Scenario) -> None:
    scenario.gpu_workers(2)
    inputs = unique_inputs("kill", 3000)
    producer = Producer(scenario.client, "logged", inputs, chunk=100)
    producer.start()
    kills = 0
    for threshold in (500, 1200, 1900):
        when(lambda t=threshold: scenario.log.count() >= t, 180, f"{threshold} executions")
        live = scenario.fleet.live()
        if live:
            scenario.fleet.kill(live[kills % len(live)])
            kills += 1
    jobs = producer.finish()
    tally = record(scenario.tally("1. SIGKILL gpu workers mid-batch", bound_s=240,
                                  producers=[producer]))
    assert kills == 3
    assert tally.lost == 0
    assert tally.executed_twice == 0
    assert tally.succeeded == tally.submitted == len(inputs) == len(jobs)
    scenario.check_results(jobs, inputs)


def test_sigkill_cpu_pool_processes_in_the_middle_of_jobs(scenario: Scenario) -> None:
    worker = scenario.cpu_worker(concurrency=2)
    scenario.consumers(scenario.queue("logged-cpu"), 1)
    inputs = unique_inputs("kill-cpu", 1500)
    producer = Producer(scenario.client, "logged-cpu", inputs, chunk=20)
    producer.start()
    killed = []
    for threshold in (300, 700, 1100):
        when(lambda t=threshold: scenario.log.count() >= t, 180, f"{threshold} executions")
        pid = scenario.fleet.kill_child(worker)
        if pid is not None:
            killed.append(pid)
    jobs = producer.finish()
    tally = record(scenario.tally("1b. SIGKILL cpu pool processes mid-job", bound_s=240,
                                  producers=[producer]))
    assert len(killed) == 3
    assert tally.lost == 0
    assert tally.executed_twice == 0
    assert tally.succeeded == tally.submitted == len(inputs)
    scenario.check_results(jobs, inputs)


def test_sigterm_gpu_workers_mid_batch_while_jobs_keep_coming(scenario: Scenario) -> None:
    scenario.gpu_workers(2)
    inputs = unique_inputs("term", 3000)
    producer = Producer(scenario.client, "logged", inputs, chunk=50)
    producer.start()
    exit_codes = []
    for threshold in (600, 1600):
        when(lambda t=threshold: scenario.log.count() >= t, 180, f"{threshold} executions")
        exit_codes.append(scenario.fleet.terminate(scenario.fleet.live()[0]))
        scenario.gpu_worker()  # a replacement, as a rolling restart would start
    jobs = producer.finish()
    tally = record(scenario.tally("2. SIGTERM gpu workers mid-batch", bound_s=240,
                                  producers=[producer]))
    assert exit_codes == [0, 0]  # warm shutdowns, within the grace period
    assert scenario.fleet.crashed == set()
    assert tally.lost == 0
    assert tally.executed_twice == 0  # strict: a warm shutdown finishes what it started
    assert tally.succeeded == tally.submitted == len(inputs)
    scenario.check_results(jobs, inputs)
