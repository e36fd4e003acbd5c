"""Ratios between same-run numbers, and the issue's targets checked against them (reported as
PASS/MISS, never asserted)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Ratio:
    """``numerator / denominator`` of two same-run rates."""

    name: str
    numerator: str
    denominator: str
    value: float | None


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from the issue: ``measured <op> goal``."""

    name: str
    op: str
    goal: float
    unit: str
    measured: float | None
    verdict: str  # PASS, MISS, or n/a (a side did not run)


#: Display names of the rates ratios are taken between.
RATES = {
    "limit": "in-process limit",
    "packed": "aidist packed",
    "single": "aidist single-message",
    "naive": "naive Celery",
    "batches": "celery-batches",
    "tiny_aidist": "tiny jobs: aidist",
    "tiny_celery": "tiny jobs: bare Celery",
    "events_on_packed": "packed, events on",
    "events_off_packed": "packed, events off",
    "events_on_single": "single-message, events on",
    "events_off_single": "single-message, events off",
    **{f"bigtable_{side}_{key}": f"{side} table: {label}"
       for key, label in (("map", "map"), ("single", "infer+result"),
                          ("store_submit", "insert+mark_sent"), ("store_work", "claim+finish"))
       for side in ("big", "empty")},
}

#: The bigtable scenario's rates: (its key in a measurement, the name's middle part here).
BIGTABLE_RATES = (("map_per_s", "map"), ("single_per_s", "single"),
                  ("store_submit_per_s", "store_submit"), ("store_work_per_s", "store_work"))
#: Big table / empty table, for each rate: at least this (the hot paths stay fast).
BIGTABLE_GOAL = 0.8

RATIO_PAIRS = (
    ("packed", "limit"), ("single", "limit"), ("naive", "limit"), ("batches", "limit"),
    ("single", "naive"), ("single", "batches"), ("packed", "naive"), ("packed", "batches"),
    ("batches", "naive"), ("tiny_aidist", "tiny_celery"),
    ("events_on_packed", "events_off_packed"), ("events_on_single", "events_off_single"),
    *((f"bigtable_big_{name}", f"bigtable_empty_{name}") for _, name in BIGTABLE_RATES),
)

#: (ratio numerator, denominator, goal) of the issue's throughput targets: ratio >= goal.
RATIO_TARGETS = (
    ("packed", "limit", 0.90),
    ("single", "limit", 0.60),
    ("single", "naive", 2.5),
    ("single", "batches", 1.3),
    ("tiny_aidist", "tiny_celery", 1.5),
    # Task events (on by default, for Flower) cost at most 5 % of either path's throughput.
    ("events_on_packed", "events_off_packed", 0.95),
    ("events_on_single", "events_off_single", 0.95),
    # A million finished jobs in the table slow neither submitting nor claiming and finishing.
    *((f"bigtable_big_{name}", f"bigtable_empty_{name}", BIGTABLE_GOAL)
      for _, name in BIGTABLE_RATES),
)
CACHE_HIT_P50_MS = 2.0


def _ok(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("status", "ok") == "ok"


def rates(results: dict[str, Any]) -> dict[str, float]:
    """Items per second of every scenario that ran to completion."""
    found: dict[str, float] = {}
    if _ok(results.get("inprocess")):
        found["limit"] = results["inprocess"]["per_s"]
    for key in ("packed", "single", "naive", "batches"):
        if _ok(results.get(key)):
            found[key] = results[key]["per_s"]
    tiny = results.get("tiny", {})
    for side in ("aidist", "celery"):
        if _ok(tiny.get(side)):
            found[f"tiny_{side}"] = tiny[side]["per_s"]
    if _ok(results.get("events")):
        for side in ("on", "off"):
            for api in ("packed", "single"):
                found[f"events_{side}_{api}"] = results["events"][side][api]["per_s"]
    if _ok(results.get("bigtable")):
        for side in ("big", "empty"):
            for key, name in BIGTABLE_RATES:
                found[f"bigtable_{side}_{name}"] = results["bigtable"][side][key]
    return found


def _ratio(found: dict[str, float], top: str, bottom: str) -> float | None:
    if top in found and bottom in found and found[bottom] > 0:
        return found[top] / found[bottom]
    return None


def ratio_name(top: str, bottom: str) -> str:
    return f"{RATES[top]} / {RATES[bottom]}"


def analyze(results: dict[str, Any]) -> dict[str, Any]:
    """Rates, ratios and target verdicts, as JSON-able dicts."""
    found = rates(results)
    ratios = [Ratio(ratio_name(top, bottom), top, bottom, _ratio(found, top, bottom))
              for top, bottom in RATIO_PAIRS]
    targets = []
    for top, bottom, goal in RATIO_TARGETS:
        value = _ratio(found, top, bottom)
        verdict = "n/a" if value is None else ("PASS" if value >= goal else "MISS")
        targets.append(Target(ratio_name(top, bottom), ">=", goal, "x", value, verdict))
    latency = results.get("latency")
    p50 = latency["hit"]["p50_ms"] if isinstance(latency, dict) and _ok(latency) else None
    verdict = "n/a" if p50 is None else ("PASS" if p50 <= CACHE_HIT_P50_MS else "MISS")
    targets.append(Target("cache-hit p50 (infer + result)", "<=", CACHE_HIT_P50_MS, "ms", p50,
                          verdict))
    return {
        "rates_per_s": found,
        "ratios": [asdict(r) for r in ratios],
        "targets": [asdict(t) for t in targets],
    }
