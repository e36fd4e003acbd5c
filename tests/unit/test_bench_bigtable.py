"""The bench's bigtable scenario as analysis and report see it: big / empty table ratios, their
verdicts against 0.8, the table rows and the PNG panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import analysis, report
from bench.scenarios.bigtable import RATES


def _side(scale: float) -> dict[str, Any]:
    return {"map_per_s": 5000.0 * scale, "single_per_s": 120.0 * scale,
            "store_submit_per_s": 15000.0 * scale, "store_work_per_s": 14000.0 * scale,
            "single_p50_ms": 8.0 / scale}


def _bigtable(big_scale: float) -> dict[str, Any]:
    empty, big = _side(1.0), _side(big_scale)
    big["store_work_per_s"] = 14000.0 * 0.5  # the claim path slowed down on the big table
    return {"status": "ok", "rows": 1_000_000, "load_s": 21.0, "empty": empty, "big": big,
            "ratios": {name: big[name] / empty[name] for name in RATES},
            "table_scans": {"jobs ls": ["jobs"]}}


def _doc(results: dict[str, Any]) -> dict[str, Any]:
    meta = {"started": "2026-01-01T00:00:00+00:00", "quick": True, "repeats": 2, "cpus": 2,
            "load_before": 0.1, "load_after": 0.2, "cpu_busy_before": 0.0}
    return {"meta": meta, "results": results, "analysis": analysis.analyze(results)}


def test_ratios_and_verdicts_against_the_goal() -> None:
    found = analysis.analyze({"bigtable": _bigtable(0.9)})
    verdicts = {t["name"]: (round(t["measured"], 3), t["verdict"]) for t in found["targets"]
                if t["name"].startswith("big table")}
    assert verdicts == {"big table: map / empty table: map": (0.9, "PASS"),
                        "big table: infer+result / empty table: infer+result": (0.9, "PASS"),
                        "big table: insert+mark_sent / empty table: insert+mark_sent":
                            (0.9, "PASS"),
                        "big table: claim+finish / empty table: claim+finish": (0.5, "MISS")}
    failed = analysis.analyze({"bigtable": {"status": "error", "error": "x"}})
    assert {t["verdict"] for t in failed["targets"] if t["name"].startswith("big")} == {"n/a"}


def test_table_and_png_show_both_tables_and_the_scans(tmp_path: Path) -> None:
    doc = _doc({"bigtable": _bigtable(0.9)})
    text = report.table(doc)
    assert "bigtable: empty vs 1,000,000 finished jobs (loaded in 21s)" in text
    assert "  store: claim + finish x 128" in text and "0.50" in text
    assert "hot statements scanning a whole table (EXPLAIN): jobs ls" in text
    assert all(len(line) <= report.WIDTH for line in text.splitlines() if "table" in line)
    png = tmp_path / "results.png"
    report.write_png(doc, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
