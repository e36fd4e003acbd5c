"""workers.watchdog: a run past the time limit ends the process (here: a recording callback)."""

from __future__ import annotations

import threading

from workers.watchdog import Watchdog


def test_a_run_past_the_limit_triggers_the_overrun() -> None:
    fired = threading.Event()
    seen: list[tuple[str, float]] = []

    def overrun(what: str, limit_s: float) -> None:
        seen.append((what, limit_s))
        fired.set()

    watchdog = Watchdog(0.05, overrun)
    with watchdog.guard("a batch of 3 jobs"):
        assert fired.wait(timeout=30)  # the run "hangs" until the watchdog fires
    assert seen == [("a batch of 3 jobs", 0.05)]


def test_runs_within_the_limit_never_trigger_it() -> None:
    fired: list[str] = []
    watchdog = Watchdog(3600.0, lambda what, _: fired.append(what))
    for _ in range(3):
        with watchdog.guard("quick"):
            pass
    assert watchdog.watching == 0  # nothing is being watched between runs
    assert fired == []


def test_a_run_is_still_watched_after_one_beside_it_ended() -> None:
    fired = threading.Event()
    seen: list[str] = []

    def overrun(what: str, _: float) -> None:
        seen.append(what)
        fired.set()

    watchdog = Watchdog(0.05, overrun)
    with watchdog.guard("the long one"):
        with watchdog.guard("the quick one"):
            pass
        assert fired.wait(timeout=30)  # the long one "hangs" until the watchdog fires
    assert seen == ["the long one"]
