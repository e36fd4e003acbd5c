"""workers.service_times: per-model speed as the autoscaler needs it (busy wall time per job,
overlapping flushes not counted twice, recent work weighing more)."""

from __future__ import annotations

import pytest

from aidist.config import Settings
from aidist.jobs import JobEntry, JobStatus
from db import Outcome
from tests.unit.doubles import Harness
from workers import service_times
from workers.hooks import BatchReport, Flush
from workers.service_times import ServiceTimes


def _flush(harness: Harness, target: str, count: int) -> tuple[Flush, BatchReport]:
    entries = [JobEntry.from_wire(harness.entry(target, f"text {i}")) for i in range(count)]
    outcomes = tuple(Outcome(e.id, 1, JobStatus.SUCCEEDED) for e in entries)
    report = BatchReport(received=count, ran=count, succeeded=count, failed=0, skipped=0,
                         expired=0, outcomes=outcomes)
    return Flush(entries), report


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(service_times.time, "monotonic", lambda: now[0])
    return now


def test_one_flush_gives_its_seconds_per_job(harness: Harness, clock: list[float]) -> None:
    hook = ServiceTimes(Settings(), "gpu", half_life_s=1e9)
    flush, report = _flush(harness, "recorder", 10)
    hook.flush_started(flush)
    clock[0] += 2.0
    hook.flush_ended(flush, report)
    (stat,) = hook.snapshot()
    assert stat.model == "recorder" and stat.pool == "gpu"
    assert stat.jobs == pytest.approx(10)
    assert stat.busy_s / stat.jobs == pytest.approx(0.2)


def test_overlapping_flushes_count_wall_time_once(harness: Harness, clock: list[float]) -> None:
    hook = ServiceTimes(Settings(), "gpu", half_life_s=1e9)
    first, first_report = _flush(harness, "recorder", 10)
    second, second_report = _flush(harness, "recorder", 10)
    hook.flush_started(first)
    clock[0] += 1.0
    hook.flush_started(second)  # two runner threads: the second starts while the first runs
    clock[0] += 1.0
    hook.flush_ended(first, first_report)
    clock[0] += 1.0
    hook.flush_ended(second, second_report)
    (stat,) = hook.snapshot()
    # 20 jobs in 3 s of wall time: 0.15 s a job (summing the flushes' 4 s would say 0.2)
    assert stat.busy_s / stat.jobs == pytest.approx(0.15)


def test_models_of_one_flush_share_its_time_by_jobs(harness: Harness, clock: list[float]) -> None:
    hook = ServiceTimes(Settings(), "gpu", half_life_s=1e9)
    a, _ = _flush(harness, "recorder", 3)
    b, _ = _flush(harness, "flaky", 1)
    flush = Flush([*a.entries, *b.entries])
    outcomes = tuple(Outcome(e.id, 1, JobStatus.SUCCEEDED) for e in flush.entries)
    hook.flush_started(flush)
    clock[0] += 4.0
    hook.flush_ended(flush, BatchReport(4, 4, 4, 0, 0, 0, outcomes=outcomes))
    stats = {s.model: s for s in hook.snapshot()}
    assert stats["recorder"].busy_s == pytest.approx(3.0)
    assert stats["flaky"].busy_s == pytest.approx(1.0)


def test_old_work_fades_and_cold_starts_are_kept(harness: Harness, clock: list[float]) -> None:
    hook = ServiceTimes(Settings(), "cpu", half_life_s=60.0)
    hook.model_loaded("recorder", 7.5)
    slow, slow_report = _flush(harness, "recorder", 10)
    hook.flush_started(slow)
    clock[0] += 10.0  # 1 s a job
    hook.flush_ended(slow, slow_report)
    clock[0] += 600.0  # ten half-lives later the worker runs fast
    fast, fast_report = _flush(harness, "recorder", 10)
    hook.flush_started(fast)
    clock[0] += 1.0  # 0.1 s a job
    hook.flush_ended(fast, fast_report)
    (stat,) = hook.snapshot()
    assert stat.cold_start_s == 7.5
    assert stat.busy_s / stat.jobs == pytest.approx(0.1, rel=0.02)


def test_a_flush_that_raised_adds_no_jobs(harness: Harness, clock: list[float]) -> None:
    hook = ServiceTimes(Settings(), "gpu")
    flush, _ = _flush(harness, "recorder", 5)
    hook.flush_started(flush)
    clock[0] += 1.0
    hook.flush_ended(flush, None)
    assert hook.snapshot() == []
