"""The ``aidist`` command: workers, submitting, inspecting jobs and models, migrations, the demo.

Errors a user can cause print one line (what went wrong, what to do) and exit non-zero; no
traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from aidist import demo as demo_module
from aidist.cli_inputs import input_files, jsonable, read_input
from aidist.cli_jobs import jobs_app
from aidist.config import MIN_RETENTION_S, Settings, redact_url
from aidist.errors import AidistError, ConfigError, InvalidInput, JobError, ServiceUnavailable
from aidist.jobs import JobStatus
from aidist.transport import Publisher
from db import JobStore
from db import setup as db_setup
from db.blobs import open_blob_store_for
from db.retention import PRUNE_BATCH, JobPruner, Pruned, blob_deleter
from producers import Client
from producers.progress import job_progress
from workers.autoscaler import run_autoscaler
from workers.flower import run_flower
from workers.launch import run_worker
from workers.scaling import ScalePolicy
from workers.sweeper import sweep_once

app = typer.Typer(help="aidist: AI inference and preprocessing as durable jobs.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database set-up and retention.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")

# Piped output gets wide lines rather than Rich's 80-column default, so ids are never wrapped.
out = Console(width=None if sys.stdout.isatty() else 200)
# An error is one line, however long: a supervisor's log must not get it in 80-column pieces.
err = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    return Settings()


@app.command()
def worker(
    *,
    pool: Annotated[
        str, typer.Option(help="gpu (models, one process per device) or cpu (ops).")
    ] = "gpu",
    models: Annotated[
        str | None, typer.Option(help="Comma-separated names to serve (default: all of the pool).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Processes of a cpu pool (default: cores).")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Torch device, e.g. cpu, cuda:0 (default: AIDIST_DEVICE)."),
    ] = None,
    dtype: Annotated[str | None, typer.Option(
        help="float32, float16 or bfloat16 for every model (default: each model's own).")] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "info",
    metrics_port: Annotated[int | None, typer.Option(
        help="Serve /metrics and /healthz on this port (default: AIDIST_WORKER_METRICS_PORT; "
             "basic auth from AIDIST_METRICS_BASIC_AUTH).")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address /metrics binds to.")] = "127.0.0.1",
    no_auth: Annotated[bool, typer.Option(
        help="Serve /metrics without auth (loopback only).")] = False,
) -> None:
    """Run a worker that consumes the queues of one pool."""
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    run_worker(_settings(), pool=pool, models=names, concurrency=concurrency, device=device,
               dtype=dtype, hostname=hostname, loglevel=loglevel, metrics_port=metrics_port,
               metrics_host=metrics_host, no_auth=no_auth)


@app.command()
def autoscale(
    *,
    pool: Annotated[str, typer.Option(help="gpu or cpu.")] = "gpu",
    models: Annotated[str | None, typer.Option(
        help="Comma-separated names its workers serve (default: all of the pool).")] = None,
    min_workers: Annotated[int, typer.Option("--min", help="Fewest workers (0: scale to zero).")
                           ] = 0,
    max_workers: Annotated[int, typer.Option("--max", help="Most workers.")] = 4,
    target_seconds: Annotated[float, typer.Option(
        help="Seconds of backlog one worker should have ahead of it.")] = 30.0,
    idle_s: Annotated[float, typer.Option(
        help="Nothing queued or running this long: down to --min.")] = 60.0,
    keep_warm: Annotated[bool, typer.Option(
        help="Keep one worker when idle if the model loads slower than --target-seconds.")
    ] = False,
    concurrency: Annotated[int | None, typer.Option(
        help="Processes per cpu-pool worker (default: cores).")] = None,
    device: Annotated[str | None, typer.Option(help="Torch device of gpu-pool workers.")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        help="Serve /metrics on this port (basic auth from AIDIST_METRICS_BASIC_AUTH).")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address /metrics binds to.")] = "127.0.0.1",
    no_auth: Annotated[bool, typer.Option(
        help="Serve /metrics without auth (loopback only).")] = False,
) -> None:
    """Start and stop `aidist worker` processes of a pool on this host to follow the backlog."""
    settings = _settings()
    cores = 1 if pool == "gpu" else (concurrency or os.cpu_count() or 1)
    policy = ScalePolicy(min_workers=min_workers, max_workers=max_workers,
                         target_seconds=target_seconds, idle_s=idle_s,
                         cooldown_s=settings.autoscale_cooldown_s, keep_warm=keep_warm,
                         concurrency=cores)
    extra = ["--concurrency", str(cores)] if pool == "cpu" else []
    extra += ["--device", device] if device else []
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    run_autoscaler(settings, pool=pool, models=names, policy=policy, worker_args=extra,
                   metrics_port=metrics_port, metrics_host=metrics_host, no_auth=no_auth)


@app.command()
def flower(
    *,
    port: Annotated[int, typer.Option(help="Port to serve on (0: a free one).")] = 5555,
    address: Annotated[str, typer.Option(help="Address to bind (0.0.0.0: every interface).")
                       ] = "127.0.0.1",
    no_auth: Annotated[bool, typer.Option(
        help="Serve without credentials (loopback only).")] = False,
) -> None:
    """Serve Flower (the Celery web monitor) for aidist's workers, with basic auth from
    AIDIST_FLOWER_BASIC_AUTH=user:password."""
    run_flower(_settings(), port=port, address=address, no_auth=no_auth)


@app.command()
def submit(
    target: Annotated[str, typer.Argument(
        help="Model or op name (see `aidist models`), or a pipeline like chunk>minilm.")],
    input: Annotated[
        str | None,
        typer.Argument(help="The input text, or - to read one input per line from stdin."),
    ] = None,
    *,
    file: Annotated[Path | None, typer.Option(
        "--file", help="Read inputs from files: a file is one job, a directory one job per "
                       "file, typed as the target takes them (bytes, image, .npy tensor, JSON, "
                       "UTF-8 text).")] = None,
    params: Annotated[str | None, typer.Option(help="Params as a JSON object.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all results.")] = 300.0,
    wait: Annotated[bool, typer.Option(help="Wait for results (else print job ids).")] = True,
) -> None:
    """Submit jobs and print one JSON line per job: id, status, result or error (an array of
    more than 1024 elements as its dtype and shape, bytes as base64)."""
    parsed = json.loads(params) if params else None
    names = target.split(">")
    with Client(_settings()) as client:
        files: list[Path] = []
        if file is not None:
            if input is not None:
                raise InvalidInput("give an INPUT or --file, not both")
            files = input_files(file)
            first = client.registry.get(names[0])
            inputs: list[Any] = [read_input(path, first.input_type, first.name)
                                 for path in files]
        elif input is None or input == "-":
            inputs = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        else:
            inputs = [input]
        if len(names) > 1:  # a pipeline, e.g. chunk>minilm
            jobs = client.pipeline_many(names, inputs, parsed)
        else:
            jobs = client.submit_many(target, inputs, parsed)
        if wait:
            _progress(client, jobs, timeout, target)
        for index, job in enumerate(jobs):
            line: dict[str, Any] = {"id": job.id}
            if files:
                line["file"] = str(files[index])
            if wait:
                try:
                    line["result"] = jsonable(client.results_of([job])[0])
                    line["status"] = JobStatus.SUCCEEDED.value
                except JobError as exc:
                    line["status"] = job.status().value
                    line["error"] = str(exc)
            else:
                line["status"] = job.status().value
            out.print_json(json.dumps(line)) if out.is_terminal else print(json.dumps(line))


def _progress(client: Client, jobs: list[Any], timeout: float, label: str) -> None:
    with job_progress(err) as bar:
        task = bar.add_task(label, total=len(jobs))
        for _ in client.as_completed(jobs, timeout=timeout):
            bar.advance(task)


@app.command()
def models() -> None:
    """List registered models and ops, and which workers have them loaded."""
    settings = _settings()
    with Client(settings) as client:
        infos = client.models()
    table = Table(Column("name", no_wrap=True), "kind", "input", "pool", "version", "max batch",
                  "loaded on", "description")
    for m in infos:
        where = ", ".join(m.loaded_on) or "-"
        if m.not_ready_on:
            where += f" [red](failed to load on {', '.join(m.not_ready_on)})[/]"
        table.add_row(m.name, m.kind, m.input_type, m.pool, m.version, str(m.max_batch_size),
                      where, m.description)
    out.print(table)


@app.command()
def sweep(
    older_than: Annotated[
        float | None, typer.Option(help="Seconds a job must have waited unsent "
                                        "(default AIDIST_SWEEP_AFTER_S).")
    ] = None,
) -> None:
    """Publish queued jobs whose message was never sent (their client or the broker failed in
    between). Every worker does this every AIDIST_SWEEP_INTERVAL_S; this is one pass now."""
    settings = _settings()
    store = JobStore.connect(settings.database_url, settings.connect_timeout_s)
    publisher = Publisher(settings.broker_url, settings.namespace, settings.connect_timeout_s)
    try:
        count = sweep_once(settings, store, publisher.publish, older_than)
    finally:
        publisher.close()
        store.close()
    out.print(f"published {count} unsent job(s)")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database if missing and run the migrations."""
    settings = _settings()
    created = db_setup.upgrade(settings.database_url, settings.connect_timeout_s)
    verb = "created and migrated" if created else "migrated"
    out.print(f"database {redact_url(settings.database_url)} {verb} to head")


@db_app.command("prune")
def db_prune(
    older_than: Annotated[float | None, typer.Option(
        help="Delete finished jobs that ended more than this many seconds ago "
             f"(default AIDIST_RETENTION_S; at least {MIN_RETENTION_S:g}).")] = None,
    batch: Annotated[int, typer.Option(
        min=1, max=100_000, help="Jobs deleted per transaction.")] = PRUNE_BATCH,
) -> None:
    """Delete finished jobs past the retention, with their history and the blobs no other row
    references, in short transactions; queued and running jobs are never touched. Every
    worker's sweeper does this too, AIDIST_PRUNE_PER_SWEEP jobs at most per pass."""
    settings = _settings()
    age = settings.retention_s if older_than is None else older_than
    if age <= 0:
        raise ConfigError("AIDIST_RETENTION_S is 0 (finished jobs are kept for ever): nothing "
                          "to prune; pass --older-than SECONDS to prune anyway")
    if age < MIN_RETENTION_S:
        raise ConfigError(f"--older-than must be at least {MIN_RETENTION_S:g} seconds: a "
                          "client may still be reading a result that recent")
    store = JobStore.connect(settings.database_url, settings.connect_timeout_s)
    shown = [time.monotonic()]

    def progress(total: Pruned) -> None:
        if time.monotonic() - shown[0] >= 1.0:
            err.print(f"pruned {total.jobs:,} jobs so far ({total.events:,} history rows, "
                      f"{total.blobs:,} blobs)", highlight=False)
            shown[0] = time.monotonic()

    blobs = open_blob_store_for(settings)
    try:
        total = JobPruner(store.engine, blob_deleter(blobs)).prune(
            age, batch=batch, wait=True, progress=progress)
    finally:
        blobs.close()
        store.close()
    out.print(f"pruned {total.jobs} finished job(s) that ended over {age:g}s ago, with "
              f"{total.events} history row(s) and {total.blobs} blob(s)", highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmark suite (bench/ in a source checkout): `aidist bench --quick`,
    `aidist bench --only packed single`; see bench/README.md."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "bench" / "run.py").exists():
        raise ConfigError("the benchmark suite ships with the source checkout: run it from there")
    done = subprocess.run([sys.executable, "-m", "bench.run", *ctx.args], cwd=checkout,
                          check=False)
    raise typer.Exit(done.returncode)


@app.command()
def demo(
    sentences: Annotated[int, typer.Option(help="Sentences to embed with minilm.")] = 2000,
    preprocess: Annotated[
        int, typer.Option(help="Preprocessing jobs (tokenize/chunk/normalize).")
    ] = 300,
    images: Annotated[int, typer.Option(
        help="Synthetic PNGs to classify through image>toy-vision.")] = 8,
    seed: Annotated[int | None, typer.Option(help="Corpus seed (default: new each run).")] = None,
) -> None:
    """Start workers, run a real workload through RabbitMQ, show results, then the cache hits."""
    demo_module.run(_settings(), sentences=sentences, preprocess=preprocess, images=images,
                    seed=seed, console=out)


def main() -> None:
    """Entry point: run the Typer app, turning aidist errors into one line and exit code."""
    try:
        app()
    except ServiceUnavailable as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(3)
    except AidistError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
