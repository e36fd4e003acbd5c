"""workers.scaling: the autoscaler's decision from what it saw (backlog seconds over the target,
within bounds, up at once, down only after the cooldown, idle to the floor)."""

from __future__ import annotations

import pytest

from aidist.errors import ConfigError
from db.backlog import ModelBacklog, PoolBacklog
from workers.scaling import ScalePolicy, Scaler


def backlog(queued: int = 0, running: int = 0, seconds_per_job: float = 0.1,
            cold_start_s: float = 0.0) -> PoolBacklog:
    if not queued and not running:
        return PoolBacklog(())
    return PoolBacklog((ModelBacklog("minilm", queued, running, seconds_per_job, cold_start_s,
                                     measured=True),))


def test_desired_is_backlog_seconds_over_the_target_within_bounds() -> None:
    scaler = Scaler(ScalePolicy(min_workers=0, max_workers=8, target_seconds=10))
    # 300 jobs x 0.1 s = 30 s, plus a first worker's 5 s cold start: 35 s / 10 s -> 4
    assert scaler.decide(0.0, backlog(300, cold_start_s=5.0), current=0).desired == 4
    # with workers running, the cold start is behind them: 30 s / 10 s -> 3, but down waits
    assert scaler.decide(1.0, backlog(300, cold_start_s=5.0), current=4).desired == 4
    assert Scaler(ScalePolicy(max_workers=2)).decide(0.0, backlog(10_000), 0).desired == 2
    one_job = Scaler(ScalePolicy(target_seconds=1000)).decide(0.0, backlog(1), 0)
    assert one_job.desired == 1  # any waiting job gets a worker


def test_scale_down_waits_for_the_cooldown() -> None:
    scaler = Scaler(ScalePolicy(max_workers=8, target_seconds=10, cooldown_s=30))
    assert scaler.decide(0.0, backlog(400), current=0).desired == 4
    held = scaler.decide(10.0, backlog(100), current=4)
    assert held.desired == 4 and "held for the cooldown" in held.reason
    assert scaler.decide(29.0, backlog(100), current=4).desired == 4
    assert scaler.decide(31.0, backlog(100), current=4).desired == 1  # 30 s of asking for 1


def test_scale_up_is_immediate() -> None:
    scaler = Scaler(ScalePolicy(max_workers=8, target_seconds=10, cooldown_s=300))
    assert scaler.decide(0.0, backlog(100), current=0).desired == 1
    assert scaler.decide(0.5, backlog(800), current=1).desired == 8


def test_idle_goes_to_the_floor_after_idle_s() -> None:
    scaler = Scaler(ScalePolicy(min_workers=0, idle_s=60))
    assert scaler.decide(0.0, backlog(10), current=0).desired == 1
    assert scaler.decide(30.0, backlog(), current=1).desired == 1  # idle, but not long enough
    gone = scaler.decide(61.0, backlog(), current=1)
    assert gone.desired == 0 and "idle for 60s" in gone.reason
    assert Scaler(ScalePolicy(min_workers=2)).decide(0.0, backlog(), current=0).desired == 2


def test_keep_warm_holds_one_worker_for_a_model_slower_to_load_than_the_target() -> None:
    policy = ScalePolicy(min_workers=0, idle_s=0, target_seconds=10, keep_warm=True)
    slow = backlog(1, cold_start_s=45.0)
    scaler = Scaler(policy)
    scaler.decide(0.0, slow, current=0)
    assert scaler.floor(slow) == 1
    assert scaler.floor(backlog(1, cold_start_s=3.0)) == 0  # fast to load: scale to zero


def test_a_cpu_worker_with_several_processes_takes_its_share() -> None:
    scaler = Scaler(ScalePolicy(max_workers=8, target_seconds=10, concurrency=4))
    assert scaler.decide(0.0, backlog(800), current=0).desired == 2  # 80 s / 4 / 10 s


@pytest.mark.parametrize(("low", "high"), [(3, 2), (-1, 2), (0, 0)])
def test_bounds_are_checked(low: int, high: int) -> None:
    with pytest.raises(ConfigError, match="--min"):
        ScalePolicy(min_workers=low, max_workers=high)
