"""workers.startup: a starting worker waits for its services, logs while it waits, and gives up
only past AIDIST_WORKER_STARTUP_WAIT_S. Pings and time are injected: no service, no real sleep."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from aidist.errors import ConfigError, ServiceUnavailable
from workers.startup import LOG_EVERY_S, MAX_BACKOFF_S, SETTING, ServiceCheck, wait_until_reachable

URL = "amqp://guest:***@127.0.0.1:5999//"


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def down_until(time: FakeTime, up_at: float | None, service: str = "RabbitMQ"
               ) -> tuple[ServiceCheck, list[float]]:
    """A check that refuses until the fake clock reaches ``up_at`` (``None``: never); the
    moments it was tried."""
    tries: list[float] = []

    def ping() -> None:
        tries.append(time.now)
        if up_at is None or time.now < up_at:
            raise ServiceUnavailable(service, URL, "[Errno 111] Connection refused")

    return ServiceCheck(service, ping), tries


def waits(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for")]


def run(time: FakeTime, checks: list[ServiceCheck], limit_s: float | None) -> None:
    wait_until_reachable(checks, limit_s, clock=time.clock, sleep=time.sleep)


def test_waits_until_the_service_answers_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aidist.worker")
    time = FakeTime()
    check, tries = down_until(time, up_at=30.0)
    run(time, [check], limit_s=None)
    assert tries[-1] >= 30.0 and len(tries) > 2
    assert all(pause <= MAX_BACKOFF_S for pause in time.sleeps)  # backoff capped
    assert time.sleeps[0] < time.sleeps[2]  # exponential at first
    first = waits(caplog)[0]
    assert first.startswith(f"waiting for RabbitMQ at {URL}: [Errno 111] Connection refused;")
    assert "0s so far" in first and f"{SETTING} unset: no limit" in first
    assert "RabbitMQ is reachable after 3" in caplog.text  # 30-something seconds


def test_logs_one_line_every_few_seconds_not_every_try(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    caplog.set_level(logging.INFO, logger="aidist.worker")
    time = FakeTime()
    check, tries = down_until(time, up_at=120.0)
    run(time, [check], limit_s=None)
    lines = waits(caplog)
    assert len(lines) < len(tries)
    assert 120 / (LOG_EVERY_S + MAX_BACKOFF_S) <= len(lines) <= 120 / LOG_EVERY_S + 1


def test_a_service_that_answers_at_once_is_not_waited_for(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    caplog.set_level(logging.INFO, logger="aidist.worker")
    time = FakeTime()
    check, tries = down_until(time, up_at=0.0)
    run(time, [check], limit_s=0.0)
    assert tries == [0.0] and time.sleeps == []
    assert caplog.text == ""


def test_zero_fails_at_once_naming_the_service_and_the_setting() -> None:
    time = FakeTime()
    check, tries = down_until(time, up_at=None)
    with pytest.raises(ServiceUnavailable) as raised:
        run(time, [check], limit_s=0.0)
    assert tries == [0.0]
    assert raised.value.service == "RabbitMQ" and raised.value.url == URL
    assert "Connection refused" in str(raised.value) and f"{SETTING}=0" in str(raised.value)
    assert isinstance(raised.value.__cause__, ServiceUnavailable)


def test_a_bound_gives_up_at_the_bound_not_a_backoff_later() -> None:
    time = FakeTime()
    check, tries = down_until(time, up_at=None)
    with pytest.raises(ServiceUnavailable, match=f"gave up after 10s .*{SETTING}=10"):
        run(time, [check], limit_s=10.0)
    assert time.now == pytest.approx(10.0)  # the last pause is cut to the bound
    assert tries[-1] == pytest.approx(10.0)  # and the service is tried once more at it


def test_all_services_share_one_budget() -> None:
    time = FakeTime()
    broker, _ = down_until(time, up_at=8.0, service="RabbitMQ")
    database, tried = down_until(time, up_at=None, service="PostgreSQL")
    redis, never = down_until(time, up_at=0.0, service="Redis")
    with pytest.raises(ServiceUnavailable) as raised:
        run(time, [broker, database, redis], limit_s=10.0)
    assert raised.value.service == "PostgreSQL"
    assert tried[0] >= 8.0 and time.now == pytest.approx(10.0)
    assert never == []  # the wait stops at the first service it gave up on


def test_an_error_that_is_not_an_outage_ends_the_wait_at_once() -> None:
    time = FakeTime()
    tries: list[int] = []

    def misconfigured() -> None:
        tries.append(1)
        raise ConfigError("the jobs table is missing; run `aidist db upgrade`")

    ping: Callable[[], None] = misconfigured
    with pytest.raises(ConfigError):
        run(time, [ServiceCheck("PostgreSQL", ping)], limit_s=None)
    assert tries == [1] and time.sleeps == []
