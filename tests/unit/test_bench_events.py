"""The bench's events scenario as analysis and report see it: on / off ratios of packed and
single-message throughput, their verdicts against 0.95, the table rows and the PNG panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import analysis, report
from bench.scenarios.events import order


def _run(per_s: float, items: int = 500) -> dict[str, Any]:
    return {"items": items, "seconds": items / per_s, "per_s": per_s}


def _events(on: tuple[float, float], off: tuple[float, float]) -> dict[str, Any]:
    return {"status": "ok", "items": 500, "rounds": 2, "order": ["on", "off", "off", "on"],
            "on": {"packed": _run(on[0]), "single": _run(on[1])},
            "off": {"packed": _run(off[0]), "single": _run(off[1])}}


def _doc(results: dict[str, Any]) -> dict[str, Any]:
    meta = {"started": "2026-01-01T00:00:00+00:00", "quick": True, "repeats": 2, "cpus": 2,
            "load_before": 0.1, "load_after": 0.2, "cpu_busy_before": 0.0}
    return {"meta": meta, "results": results, "analysis": analysis.analyze(results)}


def _target(found: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in found["targets"] if t["name"] == name)


def test_order_alternates_and_flips_every_round() -> None:
    assert order(1) == [True, False]
    assert order(3) == [True, False, False, True, True, False]


def test_events_ratios_and_verdicts_against_five_percent() -> None:
    found = analysis.analyze({"events": _events(on=(290.0, 200.0), off=(300.0, 220.0))})
    assert found["rates_per_s"]["events_off_single"] == 220.0
    packed = _target(found, "packed, events on / packed, events off")
    single = _target(found, "single-message, events on / single-message, events off")
    assert packed["goal"] == 0.95
    assert round(packed["measured"], 4) == round(290 / 300, 4)
    assert packed["verdict"] == "PASS"
    assert round(single["measured"], 4) == round(200 / 220, 4)
    assert single["verdict"] == "MISS"


def test_events_that_did_not_run_are_not_applicable() -> None:
    found = analysis.analyze({"events": {"status": "error", "error": "RuntimeError: x"}})
    verdicts = {t["verdict"] for t in found["targets"] if "events" in t["name"]}
    assert verdicts == {"n/a"}


def test_table_and_png_show_both_sides(tmp_path: Path) -> None:
    doc = _doc({"events": _events(on=(290.0, 200.0), off=(300.0, 220.0))})
    text = report.table(doc)
    assert "order on off off on" in text
    assert "  single-message: infer, events off" in text
    assert "220.0 sent/s" in text
    assert all(len(line) <= report.WIDTH for line in text.splitlines() if "events" in line)
    png = tmp_path / "results.png"
    report.write_png(doc, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_reports_a_failed_events_scenario() -> None:
    doc = _doc({"events": {"status": "error", "error": "RuntimeError: no task events"}})
    assert "ERROR: RuntimeError: no task events" in report.table(doc)
