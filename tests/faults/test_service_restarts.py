"""Fault scenarios 3 to 5: RabbitMQ, PostgreSQL and Redis restarted (as an operator does, with their
own tools) while a producer submits and workers run. Clients and workers reconnect, publishes are
confirmed or retried, and no job is lost or run twice."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aidist.jobs import JobStatus
from tests.conftest import wait_for
from tests.faults.conftest import record
from tests.faults.harness import (
    Producer,
    Scenario,
    flush_redis,
    restart_postgres,
    restart_rabbitmq,
    restart_redis,
    unique_inputs,
    when,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.timeout(600)]


def _run_through(scenario: Scenario, name: str, faults: list[Callable[[], None]],
                 count: int = 2000) -> None:
    scenario.cpu_worker()
    scenario.gpu_workers(2)
    scenario.consumers(scenario.queue("logged-cpu"), 1)
    gpu_inputs = unique_inputs(f"{name}-gpu", count)
    cpu_inputs = unique_inputs(f"{name}-cpu", count // 4)
    producers = [Producer(scenario.client, "logged", gpu_inputs, chunk=40, pause=0.01),
                 Producer(scenario.client, "logged-cpu", cpu_inputs, chunk=10, pause=0.01)]
    for producer in producers:
        producer.start()
    step = count // (len(faults) + 1)
    for index, fault in enumerate(faults, start=1):
        when(lambda t=index * step: scenario.log.count() >= t, 240, f"{index * step} executions")
        fault()
    jobs = [producer.finish() for producer in producers]
    tally = record(scenario.tally(name, bound_s=300, producers=producers))
    assert tally.lost == 0
    assert tally.executed_twice == 0
    assert tally.reruns == 0  # nothing was killed: every job ran once, one attempt each
    assert tally.succeeded == tally.submitted == len(gpu_inputs) + len(cpu_inputs)
    for finished, inputs in zip(jobs, (gpu_inputs, cpu_inputs), strict=True):
        scenario.check_results(finished, inputs)


def test_rabbitmq_restarts_during_a_run(scenario: Scenario) -> None:
    _run_through(scenario, "3. RabbitMQ restart", [restart_rabbitmq])


def test_postgres_restarts_during_a_run(scenario: Scenario) -> None:
    _run_through(scenario, "4. PostgreSQL restart", [restart_postgres])


def test_redis_restarts_and_flushes_during_a_run(scenario: Scenario) -> None:
    _run_through(scenario, "5. Redis restart and flush", [restart_redis, flush_redis])


def test_rabbitmq_restarts_while_a_long_batch_runs(scenario: Scenario) -> None:
    # one message in hand each, and a time limit above the long batch
    scenario.gpu_workers(2, env={"AIDIST_BATCH_PREFETCH": "1", "AIDIST_JOB_TIME_LIMIT_S": "60"})
    inputs = unique_inputs("gate", 20)  # one model call that runs until the gate opens
    jobs = scenario.client.submit_many("logged", inputs)
    wait_for(lambda: all(r.status is JobStatus.RUNNING
                         for r in scenario.store.get_many([j.id for j in jobs]).values()),
             timeout=60, message="the long batch to be running")
    restart_rabbitmq()  # its message comes back while the batch still runs
    wait_for(lambda: "still running on" in scenario.fleet.logs(), timeout=120,
             message="the redelivered copy to wait for the running batch")
    scenario.open_gate()
    tally = record(scenario.tally("3b. RabbitMQ restart during a long batch", bound_s=120))
    assert tally.lost == 0 and tally.executed_twice == 0 and tally.reruns == 0
    assert scenario.log.count() == len(inputs)  # the redelivered copy waited, then was skipped
    assert tally.succeeded == tally.submitted == len(inputs)
    scenario.check_results(jobs, inputs)
