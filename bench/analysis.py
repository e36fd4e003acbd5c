"""Ratios between same-run numbers, and the issue's targets checked against them (reported as
PASS/MISS, never asserted)."""

from __future__ import annotations

from collections.abc import Callable
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

#: (ratio numerator, denominator, goal) of the issue's throughput targets: ratio >= goal (tiny
#: jobs' aidist / bare Celery throughput is a ratio line only: CPU per job is its target now).
RATIO_TARGETS = (
    ("packed", "limit", 0.95),
    ("single", "limit", 0.85),
    ("single", "naive", 2.5),
    ("single", "batches", 1.5),
    # Task events (on by default, for Flower) cost at most 5 % of either path's throughput.
    ("events_on_packed", "events_off_packed", 0.95),
    ("events_on_single", "events_off_single", 0.95),
    # A million finished jobs in the table slow neither submitting nor claiming and finishing.
    *((f"bigtable_big_{name}", f"bigtable_empty_{name}", BIGTABLE_GOAL)
      for _, name in BIGTABLE_RATES),
)
CACHE_HIT_P50_MS = 2.0
#: One minilm sentence at a time, submit -> result.
MINILM_P50_MS = 20.0
#: A tiny op at a time through aidist, at most this much slower than bare Celery's round trip.
OP_OVER_CELERY_P50_MS = 5.0
#: aidist's CPU per tiny job, every process summed (client, workers, services).
TINY_CPU_US = 150.0
#: Bare Celery's CPU per tiny job / aidist's: at least this.
TINY_CPU_CELERY_OVER_AIDIST = 10.0
CPU_RATIO_NAME = "tiny jobs CPU per job: bare Celery / aidist"


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
    targets += _latency_targets(results)
    cpu = cpu_per_job(results)
    cpu_ratio = _ratio(cpu, "celery", "aidist")
    ratios.append(Ratio(CPU_RATIO_NAME, "tiny_cpu_celery", "tiny_cpu_aidist", cpu_ratio))
    targets.append(_at_most("tiny jobs CPU per job: aidist, every process", TINY_CPU_US, "µs",
                            cpu.get("aidist")))
    targets.append(Target(CPU_RATIO_NAME, ">=", TINY_CPU_CELERY_OVER_AIDIST, "x", cpu_ratio,
                          _verdict(cpu_ratio, lambda v: v >= TINY_CPU_CELERY_OVER_AIDIST)))
    return {
        "rates_per_s": found,
        "ratios": [asdict(r) for r in ratios],
        "targets": [asdict(t) for t in targets],
        "tiny_cpu_us_per_job": cpu,
    }


def _verdict(value: float | None, passes: Callable[[float], bool]) -> str:
    return "n/a" if value is None else ("PASS" if passes(value) else "MISS")


def _at_most(name: str, goal: float, unit: str, value: float | None) -> Target:
    return Target(name, "<=", goal, unit, value, _verdict(value, lambda v: v <= goal))


def _p50(entry: Any, key: str) -> float | None:
    return float(entry[key]["p50_ms"]) if _ok(entry) and key in entry else None


def _latency_targets(results: dict[str, Any]) -> list[Target]:
    """Cache-hit and minilm p50; aidist's tiny-op p50 minus bare Celery's."""
    latency = results.get("latency")
    aidist_op, celery_op = _p50(latency, "normalize"), _p50(results.get("latency_celery"),
                                                             "normalize")
    over = None if aidist_op is None or celery_op is None else aidist_op - celery_op
    return [
        _at_most("cache-hit p50 (infer + result)", CACHE_HIT_P50_MS, "ms", _p50(latency, "hit")),
        _at_most("minilm p50, one sentence at a time", MINILM_P50_MS, "ms",
                 _p50(latency, "minilm")),
        _at_most("tiny op p50: aidist preprocess - bare Celery delay().get()",
                 OP_OVER_CELERY_P50_MS, "ms", over),
    ]


def cpu_per_job(results: dict[str, Any]) -> dict[str, float]:
    """Total µs of CPU per tiny job (every process of the system) of each side that ran."""
    tiny = results.get("tiny", {})
    return {side: float(tiny[side]["cpu_us_per_job"]["total"]) for side in ("aidist", "celery")
            if _ok(tiny.get(side)) and "cpu_us_per_job" in tiny[side]}
