"""How many workers a pool needs: the autoscaler's decision, as a pure function of what it saw.

desired = ceil(backlog seconds / target seconds), within min..max, where backlog seconds are the
pool's queued and running jobs times each model's measured seconds per job (``db.backlog``), plus
the cold start of a first worker when none runs. Scaling up is immediate (a burst is served as
soon as it is seen); scaling down waits until the lower count has been enough for the whole
cooldown (the highest count asked for during it is kept), so a backlog that dips between bursts
does not stop and restart workers. With nothing queued or running for ``idle_s`` the pool goes to
its floor: ``min_workers``, or one warm worker where the model loads slower than the target
(``keep_warm``), since starting it again would already miss the target.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from aidist.errors import ConfigError
from db.backlog import PoolBacklog


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """The operator's bounds and targets for one pool."""

    min_workers: int = 0
    max_workers: int = 4
    target_seconds: float = 30.0  # backlog one worker should have ahead of it
    idle_s: float = 60.0  # nothing queued or running this long: down to the floor
    cooldown_s: float = 30.0
    keep_warm: bool = False  # keep one worker when the model loads slower than the target
    concurrency: int = 1  # processes running jobs per worker (a cpu pool's children)

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers or self.max_workers < 1:
            raise ConfigError(f"need 0 <= --min ({self.min_workers}) <= --max "
                              f"({self.max_workers}) and --max >= 1")
        if self.target_seconds <= 0 or self.idle_s < 0 or self.cooldown_s < 0:
            raise ConfigError("--target-seconds must be > 0, --idle-s and the cooldown >= 0")


@dataclass(frozen=True, slots=True)
class Decision:
    """What the scaler wants and why (one log line when it changes anything)."""

    desired: int
    reason: str
    backlog_seconds: float


class Scaler:
    """Turns backlog readings into a desired worker count, remembering what hysteresis needs."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self._asked: deque[tuple[float, int]] = deque()  # (when, raw desired), for the cooldown
        self._last_busy: float | None = None

    def floor(self, backlog: PoolBacklog) -> int:
        """Workers kept when idle."""
        warm = 1 if (self.policy.keep_warm and backlog.cold_start_s > self.policy.target_seconds
                     ) else 0
        return max(self.policy.min_workers, warm)

    def decide(self, now: float, backlog: PoolBacklog, current: int) -> Decision:
        """The desired count at time ``now`` (monotonic seconds) with ``current`` workers."""
        policy = self.policy
        floor = self.floor(backlog)
        # a running worker already paid its cold start; a first one has it ahead of it
        seconds = backlog.seconds - (backlog.cold_start_s if current and backlog.jobs else 0.0)
        seconds /= max(policy.concurrency, 1)
        if backlog.jobs:
            self._last_busy = now
            raw = max(1, math.ceil(seconds / policy.target_seconds))
            reason = (f"{backlog.jobs} jobs ({backlog.queued} queued, {backlog.running} running),"
                      f" {seconds:.1f}s of work at target {policy.target_seconds:g}s")
        elif self._last_busy is None or now - self._last_busy >= policy.idle_s:
            self._asked.clear()
            why = ("nothing queued or running" if self._last_busy is None
                   else f"idle for {policy.idle_s:g}s")
            return Decision(floor, f"{why}: the floor ({floor})", 0.0)
        else:
            raw = current
            reason = f"idle for {now - self._last_busy:.0f}s of {policy.idle_s:g}s: keep"
        raw = min(max(raw, floor), policy.max_workers)
        self._asked.append((now, raw))
        while self._asked and self._asked[0][0] < now - policy.cooldown_s:
            self._asked.popleft()
        if raw >= current:
            return Decision(raw, reason, seconds)
        held = max(asked for _, asked in self._asked)  # the most asked for during the cooldown
        if held >= current:
            return Decision(current, f"{reason}; would be {raw}, held for the cooldown", seconds)
        return Decision(held, reason, seconds)
