"""workers.periodic: a step run again and again until stopped; service errors do not end it."""

from __future__ import annotations

import threading

from aidist.errors import ServiceUnavailable
from workers.periodic import Periodic


def test_a_failing_step_is_retried_and_stop_ends_the_loop() -> None:
    calls: list[int] = []
    third = threading.Event()

    def step() -> float:
        calls.append(len(calls))
        if len(calls) == 3:
            third.set()
        if len(calls) == 1:
            raise ServiceUnavailable("Redis", "redis://x", "connection refused")
        return 0.0

    loop = Periodic("test-loop", step, retry_s=0.0)
    loop.start()
    assert third.wait(timeout=30)  # the error on the first call did not end the loop
    loop.stop()
    loop._thread.join(timeout=30)
    assert not loop._thread.is_alive()
