"""workers.service_retry.ServiceRetry: a step runs once when its service answers, is retried
while it is unreachable, and gives up as ServicesDown past the flush's budget."""

from __future__ import annotations

import pytest

from aidist.errors import ServicesDown, ServiceUnavailable, StoreError
from workers.service_retry import ServiceRetry


class Flaky:
    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures, self.calls = failures, 0
        self.error = error or ServiceUnavailable("PostgreSQL", "127.0.0.1:5432", "down")

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_a_step_whose_service_answers_runs_once() -> None:
    step = Flaky(0)
    assert ServiceRetry(30)(step) == "done"
    assert step.calls == 1


def test_a_step_is_retried_while_its_service_is_unreachable() -> None:
    step = Flaky(2)
    assert ServiceRetry(30)(step) == "done"
    assert step.calls == 3


def test_past_the_budget_the_step_gives_up_as_services_down() -> None:
    step = Flaky(10**6)
    with pytest.raises(ServicesDown) as raised:
        ServiceRetry(0.0)(step)
    assert isinstance(raised.value.__cause__, ServiceUnavailable)
    assert step.calls == 2  # the first try, and the retry loop's one attempt at budget 0


def test_any_other_error_is_not_retried() -> None:
    step = Flaky(1, StoreError("a constraint failed"))
    with pytest.raises(StoreError):
        ServiceRetry(30)(step)
    assert step.calls == 1
