"""What a bench run measures and how much: scenario names, sizes (full and --quick), options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: Every scenario, in the order they run (workers of one system are up only for its scenarios).
SCENARIOS = ("inprocess", "packed", "single", "latency", "tiny", "events", "naive", "batches",
             "autoscale", "bigtable")
AIDIST_SCENARIOS = ("packed", "single", "latency", "tiny")
BATCH_SIZES = (1, 8, 32, 64, 128)
#: In-process batch sizes of the side-by-side strategy (one single-threaded call per core).
SIDE_BY_SIDE_SIZES = (32, 64, 128)

#: Seed offsets per scenario, so no two scenarios embed the same sentences (aidist would answer a
#: repeat from its cache); all come from the same generator, so lengths are alike.
SEEDS = {"inprocess": 1, "packed": 2, "single": 3, "naive": 4, "batches": 5, "tiny": 6,
         "latency": 7, "warmup": 8, "autoscale": 9, "events_packed": 10, "events_single": 11}


@dataclass(frozen=True, slots=True)
class Sizes:
    """Items per scenario."""

    inprocess: int
    packed: int
    single: int
    naive: int
    batches: int
    tiny: int
    latency: int
    autoscale: int
    events: int  # of each packed and each single-message measurement, events on and off
    bigtable: int  # finished jobs loaded into the big table


FULL = Sizes(inprocess=2048, packed=5000, single=5000, naive=5000, batches=5000, tiny=10_000,
             latency=200, autoscale=3000, events=3000, bigtable=1_000_000)
QUICK = Sizes(inprocess=256, packed=1000, single=500, naive=500, batches=500, tiny=2000,
              latency=50, autoscale=500, events=500, bigtable=200_000)


@dataclass(frozen=True, slots=True)
class Options:
    """One run's choices (from the command line)."""

    sizes: Sizes
    out: Path
    quick: bool = False
    only: tuple[str, ...] = SCENARIOS
    seed: int = 20_240
    repeats: int = 1
    producers: int = 4
    flush_every: int = 64
    flush_interval: float = 0.01
    batches_pool: str = "solo"

    def wants(self, *names: str) -> bool:
        """True if any of ``names`` was selected."""
        return any(name in self.only for name in names)

    def seed_of(self, scenario: str, repeat: int = 0) -> int:
        """The corpus seed of one scenario's ``repeat``-th measurement (each repeat embeds other
        sentences, so aidist's cache never answers a repeat)."""
        return self.seed + 1000 * SEEDS[scenario] + 100_000 * repeat


def best_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of a scenario's repeated measurements, with every repeat's rate alongside:
    outside load on a 2-core machine only ever slows a run down."""
    best = max(runs, key=lambda run: float(run["per_s"]))
    return {**best, "repeats": len(runs), "runs_per_s": [round(r["per_s"], 2) for r in runs]}
