"""``python -m bench.run``: every scenario with its baselines in one run, on one isolated namespace
and database, then a table on stdout and ``results.json`` + ``results.png`` in the output folder.

Workers of one system run only during that system's scenarios (nothing else idles on the cores):
in-process first, then aidist (packed, single, latency, tiny), then aidist again in phases of
fresh workers with task events on and off (events), then the naive Celery worker, the
celery-batches worker, and the bare-Celery normalize worker (tiny's throughput and latency's
round trips of the same op), each stopped with SIGTERM when done;
then the autoscaler, and last ``bigtable`` (a database of its own, the empty and the big table).
Exit status: 0 when every selected scenario ran (targets are reported, not asserted), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aidist.config import Settings
from bench import analysis, report
from bench.celery_common import baseline_queues
from bench.config import AIDIST_SCENARIOS, FULL, QUICK, REPO, SCENARIOS, Options
from bench.env import CpuAccount, cleanup, cpu_busy, isolated_settings, phase, prepare
from bench.scenarios.autoscale import write_png as autoscale_png


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a smoke run of every scenario in about 2 minutes")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, metavar="SCENARIO",
                        help=f"run only these ({', '.join(SCENARIOS)})")
    parser.add_argument("--out", type=Path, help="output folder (default bench/out/<timestamp>)")
    parser.add_argument("--size", action="append", default=[], metavar="SCENARIO=N",
                        help="override one scenario's item count, e.g. --size batches=2000")
    parser.add_argument("--repeat", type=int, metavar="N",
                        help="measure each throughput scenario N times and keep the fastest "
                             "(default 2, 1 with --quick)")
    parser.add_argument("--seed", type=int, default=20_240, help="corpus seed")
    parser.add_argument("--producers", type=int, default=4,
                        help="threads of the single-message scenario (default 4)")
    parser.add_argument("--flush-every", type=int, default=64, help="celery-batches flush_every")
    parser.add_argument("--flush-interval", type=float, default=0.01,
                        help="celery-batches flush_interval, seconds")
    parser.add_argument("--batches-pool", choices=("solo", "prefork"), default="solo",
                        help="celery-batches worker pool: solo, or prefork with one child")
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    sizes = QUICK if args.quick else FULL
    for item in args.size:
        name, _, count = item.partition("=")
        if name not in SCENARIOS or not count.isdigit() or int(count) < 1:
            parser.error(f"--size wants SCENARIO=N with a scenario of {SCENARIOS}, got {item!r}")
        sizes = replace(sizes, **{name: int(count)})
    return Options(
        sizes=sizes,
        out=args.out or REPO / "bench" / "out" / stamp,
        quick=args.quick,
        only=tuple(args.only) if args.only else SCENARIOS,
        seed=args.seed,
        repeats=max(1, args.repeat or (1 if args.quick else 2)),
        producers=args.producers,
        flush_every=args.flush_every,
        flush_interval=args.flush_interval,
        batches_pool=args.batches_pool,
    )


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def guarded(name: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one scenario; an exception becomes ``{"status": "error"}`` and the run goes on."""
    print(f"[{name}] running (load {_load()})", flush=True)
    started = time.perf_counter()
    try:
        result = call()
        result.setdefault("status", "ok")
    except Exception as exc:
        traceback.print_exc()
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    result["load_after"] = _load()
    rate = f", {result['per_s']:,.1f}/s" if "per_s" in result else ""
    print(f"[{name}] {result['status']} after {time.perf_counter() - started:.1f}s{rate}",
          flush=True)
    return result


def _git_commit() -> str:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                              capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _meta(options: Options, settings: Settings) -> dict[str, Any]:
    import celery

    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": options.quick,
        "only": list(options.only),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_busy_before": cpu_busy(1.0),
        "load_before": _load(),
        "git": _git_commit(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "sizes": asdict(options.sizes),
        "seed": options.seed,
        "repeats": options.repeats,
        "namespace": settings.namespace,
        "pack_size": settings.pack_size,
        "prefetch_multiplier": settings.prefetch_multiplier,
    }


def run_scenarios(options: Options, settings: Settings, log_dir: Path) -> dict[str, Any]:
    """Every selected scenario, in order; each result is a dict with a ``status``."""
    from bench.scenarios import (
        aidist_paths,
        autoscale,
        bigtable,
        celery_paths,
        events,
        inprocess,
    )
    from producers import Client

    results: dict[str, Any] = {}
    texts = ([aidist_paths.tiny_texts(options, rep) for rep in range(options.repeats)]
             if options.wants("tiny") else [])
    if options.wants("inprocess"):
        results["inprocess"] = guarded("inprocess", lambda: inprocess.run(options))
    if options.wants(*AIDIST_SCENARIOS):
        with Client(settings) as client, phase(log_dir) as workers:
            started = guarded("aidist workers",
                              lambda: aidist_paths.start_workers(settings, workers, client))
            results["aidist_workers"] = started
            calls: dict[str, Callable[[], dict[str, Any]]] = {
                "packed": lambda: aidist_paths.packed(client, options),
                "single": lambda: aidist_paths.single(client, options),
                "latency": lambda: aidist_paths.latency(client, options),
                "tiny": lambda: aidist_paths.tiny(client, texts, workers),
            }
            for name, call in calls.items():
                if not options.wants(name):
                    continue
                entry = guarded(name, call) if started["status"] == "ok" else {
                    "status": "error", "error": "aidist workers did not start"}
                if name == "tiny":
                    results.setdefault("tiny", {})["aidist"] = entry
                else:
                    results[name] = entry
    if options.wants("events"):
        results["events"] = guarded("events", lambda: events.run(settings, options, log_dir))
    if options.wants("naive"):
        results["naive"] = guarded("naive", lambda: celery_paths.naive(settings, options, log_dir))
    if options.wants("batches"):
        results["batches"] = guarded(
            "batches", lambda: celery_paths.batches(settings, options, log_dir))
    if options.wants("tiny", "latency"):
        _bare_normalize(options, settings, texts, log_dir, results)
    if options.wants("autoscale"):
        results["autoscale"] = guarded(
            "autoscale", lambda: autoscale.run(settings, options, log_dir))
    if options.wants("bigtable"):
        results["bigtable"] = guarded(
            "bigtable", lambda: bigtable.run(settings, options, log_dir))
    return results


def _bare_normalize(options: Options, settings: Settings, texts: list[list[str]], log_dir: Path,
                    results: dict[str, Any]) -> None:
    """The bare-Celery normalize worker's phase: tiny's throughput (``results["tiny"]["celery"]``)
    and latency's one-at-a-time round trips of the same op (``results["latency_celery"]``)."""
    from bench.scenarios import aidist_paths, celery_paths

    with tempfile.TemporaryDirectory(prefix="bench-ready-") as ready, phase(log_dir) as workers:
        started = guarded("bare Celery normalize worker",
                          lambda: celery_paths.start_normalize(settings, workers, Path(ready)))
        calls: dict[str, Callable[[], dict[str, Any]]] = {
            "tiny": lambda: celery_paths.tiny(settings, workers, texts),
            "latency": lambda: celery_paths.one_at_a_time(
                settings, aidist_paths.op_latency_texts(options)),
        }
        for name, call in calls.items():
            if not options.wants(name):
                continue
            entry = (guarded(f"{name} (bare Celery)", call) if started["status"] == "ok"
                     else {"status": "error", "error": "bare Celery normalize worker did not "
                                                       "start"})
            if name == "tiny":
                results.setdefault("tiny", {})["celery"] = entry | {
                    key: started[key] for key in ("processes", "worker") if key in started}
            else:
                results["latency_celery"] = entry


def _failures(results: dict[str, Any]) -> dict[str, str]:
    failed: dict[str, str] = {}
    for name, entry in results.items():
        parts = entry.items() if name == "tiny" else [(None, entry)]
        for side, value in parts:
            if isinstance(value, dict) and value.get("status") == "error":
                failed[name if side is None else f"{name}/{side}"] = value["error"]
    return failed


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    log_dir = options.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    settings = isolated_settings()
    meta = _meta(options, settings)
    print(f"bench: {'quick' if options.quick else 'full'} run of {', '.join(options.only)}; "
          f"namespace {settings.namespace}; output {options.out}", flush=True)
    account = CpuAccount()
    try:
        prepare(settings)
        results = run_scenarios(options, settings, log_dir)
    finally:
        problems = cleanup(settings, baseline_queues(settings.namespace))
        for problem in problems:
            print(f"clean-up: {problem}", file=sys.stderr)
    meta["load_after"] = _load()
    meta["cpu"] = account.summary()
    failures = _failures(results)
    doc = {"meta": meta, "results": results, "analysis": analysis.analyze(results),
           "errors": failures, "cleanup_problems": problems}
    report.write_json(doc, options.out / "results.json")
    report.write_png(doc, options.out / "results.png")
    if isinstance(results.get("autoscale"), dict) and results["autoscale"].get("status") == "ok":
        autoscale_png(results["autoscale"], options.out / "autoscale.png")
    print(report.table(doc))
    print(f"wrote {options.out / 'results.json'} and {options.out / 'results.png'} "
          f"(worker logs in {log_dir})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
