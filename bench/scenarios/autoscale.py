"""Scenario ``autoscale``: a burst of minilm jobs against ``aidist autoscale --min 0``, against the
same burst on a fixed pool of the autoscaler's maximum size, already warm.

Measured: seconds from the burst to its first job running (the autoscaler's reaction plus a
worker's cold start), to the number of workers it asked for running, and to the last result
(drain); the fixed pool's drain time; the time until the pool is back at zero. The autoscaler's
``/metrics`` is sampled every ``SAMPLE_S`` for the series of workers, desired workers and backlog
that ``autoscale.png`` draws.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from aidist.config import Settings
from aidist.demo import make_corpus
from aidist.jobs import JobKind
from aidist.transport import queue_name
from bench.config import Options
from bench.env import READY_TIMEOUT_S, Workers, aidist_env, consuming, venv_script, wait_for
from db import JobStore
from producers import Client, Job

MAX_WORKERS = 2
TARGET_S = 10.0
IDLE_S = 5.0
SAMPLE_S = 0.2
METRICS_PORT = 9477
GAUGES = ("aidist_backlog_jobs", "aidist_backlog_seconds", "aidist_desired_workers",
          "aidist_workers", "aidist_workers_ready")


def _scrape() -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=2) as page:
        body = page.read().decode()
    values = {}
    for line in body.splitlines():
        name = line.split("{", 1)[0]
        if name in GAUGES:
            values[name] = float(line.rsplit(" ", 1)[1])
    return values


class Sampler:
    """Scrapes the autoscaler's gauges every ``SAMPLE_S`` on a thread: (seconds, gauges)."""

    def __init__(self) -> None:
        self.series: list[dict[str, float]] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with suppress(OSError):
                self.series.append({"t": round(time.monotonic() - self.started, 2),
                                    **_scrape()})
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _first_started(store: JobStore, jobs: list[Job]) -> datetime:
    with store.engine.connect() as connection:
        value = connection.execute(text("SELECT min(started_at) FROM jobs WHERE id = ANY(:ids)"),
                                   {"ids": [j.id for j in jobs]}).scalar_one()
    return value  # type: ignore[no-any-return]


def _burst(client: Client, store: JobStore, sentences: list[str]) -> dict[str, float]:
    at = datetime.now(UTC)
    began = time.monotonic()
    jobs = client.infer_many("minilm", sentences)
    client.results_of(jobs, timeout=900)
    drain = time.monotonic() - began
    first = (_first_started(store, jobs) - at).total_seconds()
    return {"drain_s": round(drain, 2), "first_running_s": round(first, 2),
            "per_s": round(len(sentences) / drain, 1)}


def run(settings: Settings, options: Options, log_dir: Path) -> dict[str, Any]:
    """Both sides, the autoscaled one first (its pool starts from zero)."""
    size = options.sizes.autoscale
    store = JobStore.connect(settings.database_url)
    env = {**aidist_env(settings), "AIDIST_AUTOSCALE_POLL_S": "0.25"}
    result: dict[str, Any] = {"items": size, "max_workers": MAX_WORKERS, "target_s": TARGET_S}
    try:
        with Client(settings) as client:
            workers = Workers(log_dir)
            scaler = workers.start("autoscale", [
                venv_script("aidist"), "autoscale", "--pool", "gpu", "--models", "minilm",
                "--min", "0", "--max", str(MAX_WORKERS), "--target-seconds", str(TARGET_S),
                "--idle-s", str(IDLE_S), "--metrics-port", str(METRICS_PORT), "--no-auth"], env)
            try:
                wait_for(lambda: _try_scrape() is not None, timeout=60,
                         what="the autoscaler's /metrics", workers=workers)
                with Sampler() as sampler:
                    burst_at = time.monotonic() - sampler.started
                    auto = _burst(client, store, make_corpus(size, options.seed_of("autoscale")))
                    wait_for(lambda: _gauge(sampler, "aidist_workers") == 0, timeout=300,
                             what="the pool to go back to zero", workers=workers)
                    back_to_zero = time.monotonic() - sampler.started - burst_at
                series = sampler.series
            finally:
                workers.stop_all()
            peak_desired = max((s.get("aidist_desired_workers", 0) for s in series), default=0)
            reached = next((s["t"] for s in series if s["t"] >= burst_at
                            and s.get("aidist_workers_ready", 0) >= peak_desired > 0), None)
            result["autoscaled"] = {**auto, "peak_desired": peak_desired,
                                    "desired_ready_s": (None if reached is None
                                                        else round(reached - burst_at, 2)),
                                    "back_to_zero_s": round(back_to_zero, 2),
                                    "exit_code": scaler.process.returncode}
            result["series"] = [{**s, "t": round(s["t"] - burst_at, 2)} for s in series]
            result["fixed"] = _fixed(settings, client, store, options, log_dir)
    finally:
        store.close()
    fixed, auto = result["fixed"]["drain_s"], result["autoscaled"]["drain_s"]
    result["drain_vs_fixed"] = round(auto / fixed, 2) if fixed else None
    result["per_s"] = result["autoscaled"]["per_s"]
    result["seconds"] = result["autoscaled"]["drain_s"]
    return result


def _fixed(settings: Settings, client: Client, store: JobStore, options: Options,
           log_dir: Path) -> dict[str, float]:
    """The same burst on ``MAX_WORKERS`` gpu workers started and warmed beforehand."""
    workers = Workers(log_dir)
    try:
        for index in range(MAX_WORKERS):
            workers.start(f"fixed-gpu-{index}", [
                venv_script("aidist"), "worker", "--pool", "gpu", "--models", "minilm",
                "--hostname", f"fixed{index}@bench"], aidist_env(settings))
        queue = queue_name(settings.namespace, JobKind.INFER, "minilm")
        wait_for(consuming(settings.broker_url, [queue]), timeout=READY_TIMEOUT_S,
                 what="the fixed pool to consume", workers=workers, interval=0.25)
        client.map("minilm", make_corpus(64, 97), timeout=900)  # warm
        sentences = make_corpus(options.sizes.autoscale, options.seed_of("autoscale", 1))
        return _burst(client, store, sentences)
    finally:
        workers.stop_all()


def _try_scrape() -> dict[str, float] | None:
    try:
        return _scrape()
    except OSError:
        return None


def _gauge(sampler: Sampler, name: str) -> float | None:
    return sampler.series[-1].get(name) if sampler.series else None


def write_png(result: dict[str, Any], path: Path) -> None:
    """Workers, desired workers and backlog over time, the burst at t = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result.get("series") or []
    if not series:
        return
    t = [s["t"] for s in series]
    figure, (counts, backlog) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    counts.step(t, [s.get("aidist_desired_workers", 0) for s in series], where="post",
                label="desired workers")
    counts.step(t, [s.get("aidist_workers", 0) for s in series], where="post",
                label="workers started")
    counts.step(t, [s.get("aidist_workers_ready", 0) for s in series], where="post",
                label="workers ready (model loaded)", linestyle="--")
    counts.set_ylabel("workers")
    counts.legend(loc="upper right")
    counts.set_title(f"aidist autoscale: burst of {result['items']:,} minilm jobs at t=0 "
                     f"(--min 0 --max {result['max_workers']} --target-seconds "
                     f"{result['target_s']:g})")
    backlog.plot(t, [s.get("aidist_backlog_jobs", 0) for s in series], label="backlog (jobs)")
    backlog.set_ylabel("jobs")
    twin = backlog.twinx()
    twin.plot(t, [s.get("aidist_backlog_seconds", 0) for s in series], color="tab:red",
              label="backlog (seconds)")
    twin.set_ylabel("seconds")
    backlog.set_xlabel("seconds since the burst")
    backlog.legend(loc="upper left")
    twin.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
