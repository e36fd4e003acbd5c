"""The bench's CPU-per-job accounting and the issue 15 latency targets as analysis and report see
them: process trees, per-job arithmetic, verdicts and the table rows (synthetic numbers, no
timing asserted)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from bench import analysis, cpu_accounting, report
from bench.cpu_accounting import Proc, Snapshot


def _account(total: float) -> dict[str, Any]:
    return {"client": total / 4, "worker": total / 2, "postgres": total / 8, "redis": total / 16,
            "rabbitmq": total / 16, "total": total, "other": 3.0, "jobs": 1000}


def _tiny(aidist_us: float, celery_us: float) -> dict[str, Any]:
    def side(per_s: float, us: float) -> dict[str, Any]:
        return {"items": 1000, "seconds": 1000 / per_s, "per_s": per_s,
                "cpu_us_per_job": _account(us)}
    return {"aidist": side(3000.0, aidist_us), "celery": side(500.0, celery_us)}


def _latency(p50: dict[str, float]) -> dict[str, Any]:
    return {key: {"n": 50, "p50_ms": value, "p90_ms": value, "p99_ms": value, "max_ms": value}
            for key, value in p50.items()}


def _target(found: dict[str, Any], start: str) -> dict[str, Any]:
    return next(t for t in found["targets"] if t["name"].startswith(start))


def test_tree_takes_descendants_of_live_roots_only() -> None:
    procs = {pid: Proc(pid, ppid, "x", 1, 0) for pid, ppid in
             ((10, 1), (11, 10), (12, 11), (20, 1), (21, 20))}
    assert cpu_accounting.tree(procs, [10, 99]) == {10, 11, 12}


def test_postgres_share_is_the_runs_backends_background_and_postmaster_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    titles = {2: "postgres: 15/main: walwriter ",
              3: "postgres: 15/main: postgres aidist_bench_1 127.0.0.1(5000) idle ",
              4: "postgres: 15/main: postgres aidist_test_2 127.0.0.1(5001) idle ",
              5: "postgres: 15/main: postgres aidist_bench_1 [local] idle "}
    monkeypatch.setattr(cpu_accounting, "_title", lambda pid: titles.get(pid, ""))
    procs = {1: Proc(1, 0, "postgres", 5, 100), 2: Proc(2, 1, "postgres", 7, 0),
             3: Proc(3, 1, "postgres", 11, 0), 4: Proc(4, 1, "postgres", 13, 0),
             5: Proc(5, 1, "postgres", 17, 0), 6: Proc(6, 1, "python", 19, 0)}
    assert cpu_accounting.postgres_ticks(procs, "aidist_bench_1") == 5 + 7 + 11 + 17
    assert cpu_accounting.postgres_ticks(procs, None) == 5 + 7 + 11 + 13 + 17


def test_per_job_is_microseconds_per_job_and_other_is_the_machine_rest() -> None:
    start = Snapshot(0.0, {"client": 1.0, "worker": 2.0, "postgres": 1.0, "postgres_all": 3.0},
                     10.0)
    end = Snapshot(2.0, {"client": 1.1, "worker": 2.3, "postgres": 1.05, "postgres_all": 3.1},
                   10.6)
    account = cpu_accounting.per_job(start, end, 1000)
    assert account["client"] == 100.0
    assert account["worker"] == 300.0
    assert (account["postgres"], account["postgres_all"]) == (50.0, 100.0)
    assert account["total"] == 450.0
    assert account["other"] == 100.0  # 600 busy - 400 client/worker - 100 whole postgres


def test_snapshot_sees_this_process_as_client() -> None:
    shot = cpu_accounting.snapshot([os.getpid()])
    assert set(shot.groups) == {"client", "worker", "postgres", "postgres_all",
                                *cpu_accounting.SERVERS}
    assert shot.groups["worker"] >= 0.0


def test_cpu_ratio_and_targets() -> None:
    results = {"tiny": _tiny(120.0, 1500.0),
               "latency": _latency({"hit": 1.5, "minilm": 25.0, "normalize": 7.0}),
               "latency_celery": {"status": "ok", **_latency({"normalize": 3.0})}}
    found = analysis.analyze(results)
    assert found["tiny_cpu_us_per_job"] == {"aidist": 120.0, "celery": 1500.0}
    assert _target(found, "tiny jobs CPU per job: aidist")["verdict"] == "PASS"
    ratio = _target(found, "tiny jobs CPU per job: bare Celery / aidist")
    assert (round(ratio["measured"], 2), ratio["verdict"]) == (12.5, "PASS")
    assert _target(found, "minilm p50")["verdict"] == "MISS"
    op = _target(found, "tiny op p50")
    assert (op["measured"], op["verdict"]) == (4.0, "PASS")
    assert _target(found, "cache-hit p50")["verdict"] == "PASS"
    assert not any(t["name"].startswith("tiny jobs: aidist /") for t in found["targets"])


def test_missing_sides_are_not_applicable() -> None:
    found = analysis.analyze({"latency": _latency({"hit": 1.0, "minilm": 5.0,
                                                   "normalize": 4.0})})
    assert _target(found, "tiny op p50")["verdict"] == "n/a"
    assert _target(found, "tiny jobs CPU per job: bare Celery")["verdict"] == "n/a"


def test_table_shows_the_cpu_rows_and_both_op_latencies() -> None:
    results = {"tiny": _tiny(120.0, 1500.0),
               "latency": _latency({"miss": 9.0, "hit": 1.5, "minilm": 25.0, "normalize": 7.0}),
               "latency_celery": {"status": "error", "error": "TimeoutError: x"}}
    meta = {"started": "2026-01-01T00:00:00+00:00", "quick": True, "repeats": 1, "cpus": 2,
            "load_before": 0.1, "load_after": 0.2, "cpu_busy_before": 0.0}
    text = report.table({"meta": meta, "results": results,
                         "analysis": analysis.analyze(results)})
    for group in ("client", "worker", "postgres", "redis", "rabbitmq", "total"):
        assert f"tiny jobs CPU/job: {group}" in text
    assert "minilm, one sentence" in text
    assert "bare Celery delay().get()" in text and "ERROR: TimeoutError: x" in text
    assert all(len(line) <= report.WIDTH for line in text.splitlines()
               if "CPU/job" in line or "CPU per job" in line)


def test_table_shows_what_the_queue_adds_to_a_lone_minilm_sentence() -> None:
    results = {"latency": _latency({"minilm": 25.0}),
               "inprocess": {"status": "ok", "per_s": 300.0, "best_batch": "64", "items": 300,
                             "by_batch": {"64": {"seconds": 1.0, "per_s": 300.0}},
                             "one_at_a_time": _latency({"x": 18.5})["x"]}}
    meta = {"started": "2026-01-01T00:00:00+00:00", "quick": True, "repeats": 1, "cpus": 2,
            "load_before": 0.1, "load_after": 0.2, "cpu_busy_before": 0.0}
    text = report.table({"meta": meta, "results": results, "analysis": analysis.analyze(results)})
    assert "the model alone" in text
    assert report.queue_added_ms(results) == 6.5
    assert [line.split()[-1] for line in text.splitlines()
            if "what the queue adds" in line] == ["6.50"]
    assert report.queue_added_ms({"latency": _latency({"minilm": 25.0})}) is None
