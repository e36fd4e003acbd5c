"""What each fault scenario reports: the tally line, and the execution log it counts runs from.

Counting is independent of aidist's own records where it matters: executions come from the
``logged`` model's execution log (tests/plugins.py), one file per process. Re-runs (attempts
beyond each job's first) come from the jobs' rows, and are set against what the killed processes
had in flight: jobs claimed and not committed, the one re-run no system avoids.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

IN_FLIGHT = 2  # flushes a fault-suite worker runs at once (AIDIST_BATCH_RUNNERS)


# -- tally ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tally:
    """What one scenario did to its jobs."""

    scenario: str
    submitted: int  # rows in the scenario's database: every job aidist accepted
    succeeded: int
    failed: int
    cancelled: int
    expired: int
    lost: int  # not terminal within the bound
    executed_twice: int  # jobs the model ran more than once (crash re-runs excluded, see below)
    rerun_after_crash: int  # runs of work in flight in a process that was killed
    seconds: float
    refused_submits: int = 0  # submits refused while a service was down (nothing written)
    worker_restarts: int = 0  # processes the supervisor started after one died
    reruns: int = 0  # attempts beyond each job's first (sum of attempts - jobs that ever ran)
    extra_executions: int = 0  # executions the log counted beyond one per input
    in_flight_at_kills: int = 0  # claimed, uncommitted by a process killed or ended by the watchdog

    def line(self) -> str:
        return (f"{self.scenario}: submitted={self.submitted} succeeded={self.succeeded} "
                f"failed={self.failed} cancelled={self.cancelled} expired={self.expired} "
                f"lost={self.lost} executed-twice={self.executed_twice} "
                f"(re-run after crash={self.rerun_after_crash}) re-runs={self.reruns} "
                f"(in flight at kills={self.in_flight_at_kills}) "
                f"extra-executions={self.extra_executions} refused-submits="
                f"{self.refused_submits} worker-restarts={self.worker_restarts} "
                f"in {self.seconds:.1f}s")


# -- execution log --------------------------------------------------------------------------------

class ExecLog:
    """The ``logged`` model's record of every input it ran: ``<dir>/<pid>.log``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def runs(self) -> dict[str, list[tuple[int, int]]]:
        """input -> [(pid, call number)] of every execution."""
        found: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for path in self.directory.glob("*.log"):
            pid = int(path.stem)
            for line in path.read_text().splitlines():
                call, _, text = line.partition("\t")
                found[text].append((pid, int(call)))
        return found

    def count(self) -> int:
        return sum(len(runs) for runs in self.runs().values())

    def extra(self) -> int:
        """Executions beyond one per input: every second run, whatever its cause."""
        return sum(len(runs) - 1 for runs in self.runs().values())

    def duplicates(self, crashed: set[int]) -> tuple[int, int]:
        """(executed twice, re-run after crash). A process that was killed (or ended by the
        watchdog) may have run its last batches without committing them: those run again
        elsewhere, which is the one re-run no system can avoid. They are counted apart; any other
        second execution counts as executed twice. (A flush is one model call in the suite, and
        IN_FLIGHT flushes run at once: a process has at most its last IN_FLIGHT calls
        uncommitted.)"""
        runs = self.runs()
        last_call: dict[int, int] = {}
        for executions in runs.values():
            for pid, call in executions:
                last_call[pid] = max(call, last_call.get(pid, 0))
        twice = rerun = 0
        for executions in runs.values():
            counted = [(pid, call) for pid, call in executions
                       if not (pid in crashed and call > last_call[pid] - IN_FLIGHT)]
            if len(counted) > 1:
                twice += 1
            rerun += len(executions) - len(counted) if len(executions) > 1 else 0
        return twice, rerun
