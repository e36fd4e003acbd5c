"""Fault scenarios 1 and 2: worker processes killed (SIGKILL) or stopped (SIGTERM) in the middle of
batches while jobs keep coming. Nothing may be lost, nothing run twice beyond the batch a killed
process had in hand."""

from __future__ import annotations

import pytest

from aidist.jobs import JobStatus
from tests.conftest import queue_depth, wait_for
from tests.faults.conftest import record
from tests.faults.harness import (
    IN_FLIGHT,
    Producer,
    Scenario,
    queue_messages,
    unique_inputs,
    when,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.timeout(600)]


def test_sigkill_gpu_workers_in_the_middle_of_batches(scenario: Scenario) -> None:
    scenario.gpu_workers(2)
    inputs = unique_inputs("kill", 3000)
    # messages of logged's max batch: one message is one flush is one model call, so a killed
    # process's executed but uncommitted work is its last IN_FLIGHT logged calls
    producer = Producer(scenario.client, "logged", inputs, chunk=64)
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
    # a re-run only for what a killed process had claimed and not committed
    assert 0 < tally.reruns <= tally.in_flight_at_kills
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
        pid = scenario.kill_child(worker)
        if pid is not None:
            killed.append(pid)
    jobs = producer.finish()
    tally = record(scenario.tally("1b. SIGKILL cpu pool processes mid-job", bound_s=240,
                                  producers=[producer]))
    assert len(killed) == 3
    assert tally.lost == 0
    assert tally.executed_twice == 0
    assert tally.reruns <= tally.in_flight_at_kills
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
    assert tally.reruns == 0  # and what it hands back unopened spends no attempt
    assert tally.succeeded == tally.submitted == len(inputs)
    scenario.check_results(jobs, inputs)


def test_sigterm_a_gpu_worker_holding_the_next_steps_of_pipelines(scenario: Scenario) -> None:
    # A pipeline's second step waits in a gpu worker's prefetch window, its job still recorded as
    # running on the cpu-pool process that ran the first step (alive, and done with it), when
    # that gpu worker is stopped: the steps come back redelivered, though nothing ran them.
    env = {"AIDIST_JOB_TIME_LIMIT_S": "60"}
    scenario.cpu_worker()
    (first,) = scenario.gpu_workers(1, env=env)
    scenario.consumers(scenario.queue("logged-cpu"), 1)
    gates = unique_inputs("gate", IN_FLIGHT)
    held = []
    for text in gates:  # one flush per runner thread, each held until the gate opens
        (job,) = scenario.client.submit_many("logged", [text])
        wait_for(lambda job=job: scenario.store.get(job.id).status is JobStatus.RUNNING,
                 timeout=60, message="a gated flush to be running")
        held.append(job)
    inputs = unique_inputs("pipe", 400)
    jobs = scenario.client.pipeline_many(["logged-cpu", "logged"], inputs, {})
    cpu_queue, gpu_queue = scenario.queue("logged-cpu"), scenario.queue("logged")
    # every first step ran and forwarded its second, which the gated gpu worker has in hand
    wait_for(lambda: queue_messages(cpu_queue) == 0 and queue_depth(scenario.settings,
                                                                    gpu_queue) == 0
             and queue_messages(gpu_queue) > 0 and scenario.log.count() >= len(inputs),
             timeout=120, message="the second steps to wait in the gpu worker's hands")
    scenario.gpu_worker(env=env)
    scenario.consumers(gpu_queue, 2)
    assert scenario.fleet.terminate(first, meanwhile=scenario.open_gate) == 0
    tally = record(scenario.tally("2b. SIGTERM a gpu worker holding pipelines' next steps",
                                  bound_s=120))
    assert tally.lost == 0
    assert tally.executed_twice == 0 and tally.extra_executions == 0
    assert tally.reruns == 0  # nothing ran them before: no attempt is spent on them
    assert tally.succeeded == tally.submitted == len(inputs) + len(gates)
    scenario.check_results(jobs, [f"done:{text}" for text in inputs])
    scenario.check_results(held, gates)
