"""``aidist demo``: the whole path on this machine, end to end, with real services and real workers.

It starts a gpu-pool worker (minilm, toy-classifier, toy-vision; on the CPU where there is no GPU)
and a cpu-pool worker (tokenize, chunk, normalize, image) as ``aidist worker`` processes, embeds a
corpus through RabbitMQ, runs preprocessing jobs, classifies a few synthetic PNGs through the
``image>toy-vision`` pipeline, shows results and the job counts Postgres holds, then submits
everything again to show the cache answering without a worker. It stops its workers with SIGTERM at
the end.
"""

from __future__ import annotations

import io
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from aidist.config import Settings
from aidist.jobs import JobStatus
from aidist.processes import wait_or_kill
from aidist.transport import queue_name, queue_stats
from db import setup as db_setup
from producers import Client, Job
from producers.progress import job_progress

READY_TIMEOUT_S = 180.0

_SUBJECTS = ["The model", "A worker", "Our cluster", "The queue", "A researcher", "The GPU",
             "This pipeline", "The cache", "An engineer", "The scheduler", "A small cat",
             "The river", "A violinist", "The old library", "A night train", "The harbour"]
_VERBS = ["embeds", "reads", "summarises", "translates", "sorts", "watches", "carries",
          "remembers", "measures", "ignores", "paints", "rebuilds", "follows", "questions"]
_OBJECTS = ["long documents", "every sentence", "the morning news", "noisy sensor data",
            "a million tokens", "the weather report", "old photographs", "customer emails",
            "the shipping manifest", "a recipe for bread", "quiet piano music", "legal contracts"]
_TAILS = ["before sunrise.", "without losing a single job.", "in small batches.",
          "while the others sleep.", "for the third time today.", "with surprising care.",
          "under heavy load.", "and then rests.", "as fast as it can.", "in two languages."]


def make_corpus(count: int, seed: int) -> list[str]:
    """Distinct, varied English sentences, reproducible from ``seed``."""
    rng = random.Random(seed)
    sentences: list[str] = []
    seen: set[str] = set()
    while len(sentences) < count:
        text = (f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
                f"{rng.choice(_TAILS)} (#{rng.randrange(10**6)})")
        if text not in seen:
            seen.add(text)
            sentences.append(text)
    return sentences


def make_images(count: int, seed: int) -> list[bytes]:
    """Synthetic PNGs of a few sizes, reproducible from ``seed``: a background with rectangles
    and ellipses in random colours."""
    rng = random.Random(seed)
    images: list[bytes] = []
    for _ in range(count):
        side = rng.choice([40, 48, 64])
        image = Image.new("RGB", (side, side), _colour(rng))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, x1 = sorted(rng.sample(range(side), 2))
            y0, y1 = sorted(rng.sample(range(side), 2))
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape((x0, y0, x1, y1), fill=_colour(rng))
        encoded = io.BytesIO()
        image.save(encoded, format="PNG")
        images.append(encoded.getvalue())
    return images


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


IMAGE_PIPELINE = ["image", "toy-vision"]
IMAGE_PARAMS = {"image": {"size": [32, 32]}}


def _aidist_command() -> list[str]:
    script = Path(sys.executable).parent / "aidist"
    if script.exists():
        return [str(script)]
    found = shutil.which("aidist")
    return [found] if found else [sys.executable, "-m", "aidist.cli"]


class DemoWorkers:
    """The worker processes the demo starts, stops, and points the user to the logs of."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, client: Client, console: Console) -> None:
        queues = [queue_name(self.settings.namespace, spec.kind, spec.name)
                  for spec in client.registry.specs() if spec.pool in ("gpu", "cpu")]
        # Other workers may already serve these queues: wait for ours to add their consumers.
        before = {s.name: s.consumers for s in queue_stats(self.settings.broker_url, queues)}
        for pool in ("gpu", "cpu"):
            log = (self.log_dir / f"worker-{pool}.log").open("wb")
            self.processes[pool] = subprocess.Popen(
                [*_aidist_command(), "worker", "--pool", pool], stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        with console.status("starting workers (the gpu pool loads and warms up its models)"):
            while True:
                for pool, process in self.processes.items():
                    if process.poll() is not None:
                        log_text = (self.log_dir / f"worker-{pool}.log").read_text()
                        raise RuntimeError(f"{pool} worker exited:\n{log_text[-2000:]}")
                stats = queue_stats(self.settings.broker_url, queues)
                if all(s.consumers > before[s.name] for s in stats):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers not consuming after {READY_TIMEOUT_S:.0f}s")
                time.sleep(0.25)
        pids = ", ".join(f"{pool} pid {p.pid}" for pool, p in self.processes.items())
        if any(before.values()):
            console.print("[yellow]note:[/] other workers also consume these queues")
        console.print(f"workers ready ({pids}); logs in {self.log_dir}")

    def stop(self, console: Console) -> None:
        for process in self.processes.values():  # both shut down at once
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for pool, process in self.processes.items():
            console.print(f"{pool} worker stopped (exit code {wait_or_kill(process)})")


def _wait_with_progress(client: Client, groups: dict[str, Sequence[Job]],
                        console: Console) -> dict[str, float]:
    """One progress bar per group, advanced as jobs finish; seconds until each group was done."""
    started = time.perf_counter()
    label_of = {job.id: label for label, jobs in groups.items() for job in jobs}
    left = {label: len(jobs) for label, jobs in groups.items()}
    done_after: dict[str, float] = {}
    everything = [job for jobs in groups.values() for job in jobs]
    with job_progress(console) as bar:
        tasks = {label: bar.add_task(label, total=len(jobs)) for label, jobs in groups.items()}
        for job in client.as_completed(everything, timeout=600):
            label = label_of[job.id]
            bar.advance(tasks[label])
            left[label] -= 1
            if left[label] == 0:
                done_after[label] = time.perf_counter() - started
    return done_after


def _status_counts(client: Client, ids: Sequence[str]) -> list[int]:
    counts = client.store.count_by_status(ids)
    records = client.store.get_many(ids).values()
    return [*(counts[s] for s in JobStatus), sum(1 for r in records if r.cache_hit),
            sum(1 for r in records if r.worker is not None)]


def _status_table(pass1: list[int], pass2: list[int]) -> Table:
    table = Table(title="jobs as recorded in Postgres")
    table.add_column("")
    table.add_column("pass 1", justify="right")
    table.add_column("pass 2", justify="right")
    labels = [s.value for s in JobStatus] + ["cache hits", "ran on a worker"]
    for label, first, second in zip(labels, pass1, pass2, strict=True):
        table.add_row(label, str(first), str(second))
    return table


def _submit_all(client: Client, corpus: list[str], prep: dict[str, list[str]],
                images: list[bytes], tenant: str
                ) -> tuple[list[Job], list[Job], list[Job], float]:
    started = time.perf_counter()
    embed_jobs = client.infer_many("minilm", corpus, tenant=tenant)
    prep_jobs: list[Job] = []
    for op, texts in prep.items():
        params = {"size": 24, "overlap": 6} if op == "chunk" else None
        prep_jobs += client.preprocess_many(op, texts, params, tenant=tenant)
    image_jobs = client.pipeline_many(IMAGE_PIPELINE, images, IMAGE_PARAMS,
                                      tenant=tenant) if images else []
    return embed_jobs, prep_jobs, image_jobs, time.perf_counter() - started


def run(settings: Settings, *, sentences: int = 2000, preprocess: int = 300, images: int = 8,
        seed: int | None = None, console: Console | None = None) -> None:
    """Run the demo; raises ``ServiceUnavailable`` naming what is down."""
    console = console or Console()
    seed = seed if seed is not None else random.SystemRandom().randrange(10**9)
    db_setup.upgrade(settings.database_url, settings.connect_timeout_s)
    corpus = make_corpus(sentences, seed)
    pngs = make_images(images, seed)
    documents = [" ".join(make_corpus(40, seed + i + 1)) for i in range(max(preprocess // 3, 1))]
    prep = {
        "tokenize": corpus[: max(preprocess // 3, 1)],
        "chunk": documents,
        "normalize": [f"  {text.upper()}\t\u00a0 ({i})  " for i, text in
                      enumerate(corpus[: max(preprocess - 2 * (preprocess // 3), 1)])],
    }
    console.rule("[bold]aidist demo")
    console.print(f"corpus: {len(corpus)} sentences (seed {seed}) + "
                  f"{sum(len(v) for v in prep.values())} preprocessing jobs + "
                  f"{len(pngs)} synthetic PNGs")
    tenant = f"demo-{seed}"
    with Client(settings) as client, tempfile.TemporaryDirectory(prefix="aidist-demo-") as logs:
        client.publisher.connect()
        client.cache.ping()
        workers = DemoWorkers(settings, Path(logs))
        try:
            workers.start(client, console)
            console.rule("pass 1: through RabbitMQ to the workers")
            embed_jobs, prep_jobs, image_jobs, submit_s = _submit_all(client, corpus, prep,
                                                                      pngs, tenant)
            groups = {"minilm": embed_jobs, "preprocess": prep_jobs, "images": image_jobs}
            done = _wait_with_progress(client, {k: v for k, v in groups.items() if v}, console)
            vectors = client.results_of(embed_jobs)
            embed_s = submit_s + done["minilm"]
            console.print(
                f"submitted {len(embed_jobs) + len(prep_jobs)} jobs in {submit_s:.2f}s; "
                f"embedded {len(vectors)} sentences in {embed_s:.2f}s = "
                f"[bold]{len(vectors) / embed_s:.0f} sentences/s[/] end to end; "
                f"{len(prep_jobs)} preprocessing jobs done after "
                f"{submit_s + done['preprocess']:.2f}s"
            )
            if image_jobs:
                console.print(f"classified {len(image_jobs)} PNGs through "
                              f"{'>'.join(IMAGE_PIPELINE)} (decoded and resized on the cpu "
                              f"pool, batched as tensors on the gpu pool) after "
                              f"{submit_s + done['images']:.2f}s")
            _show_samples(client, corpus, vectors, prep, prep_jobs, console=console,
                          images=list(zip(pngs, image_jobs, strict=True)))
            counts1 = _status_counts(client, [j.id for j in embed_jobs + prep_jobs + image_jobs])

            console.rule("pass 2: the same inputs again")
            embed2, prep2, images2, submit2_s = _submit_all(client, corpus, prep, pngs, tenant)
            again = client.results_of(embed2)
            same = all(np.array_equal(a, b) for a, b in zip(vectors, again, strict=True))
            counts2 = _status_counts(client, [j.id for j in embed2 + prep2 + images2])
            console.print(f"{len(embed2) + len(prep2) + len(images2)} jobs answered from the "
                          f"Redis cache in {submit2_s:.2f}s without a worker; results identical "
                          f"to pass 1: {same}")
            console.print(_status_table(counts1, counts2))
        finally:
            workers.stop(console)


def _show_samples(client: Client, corpus: list[str], vectors: list[np.ndarray],
                  prep: dict[str, list[str]], prep_jobs: list[Job], *,
                  console: Console, images: Sequence[tuple[bytes, Job]] = ()) -> None:
    table = Table(title="a few results")
    table.add_column("job")
    table.add_column("input", max_width=48)
    table.add_column("output", max_width=60)
    for text, vector in list(zip(corpus, vectors, strict=False))[:3]:
        head = ", ".join(f"{x:+.3f}" for x in vector[:4])
        table.add_row("minilm", text, f"[{head}, ...] dim {vector.shape[0]}, "
                      f"norm {np.linalg.norm(vector):.3f}")
    by_op: dict[str, Job] = {}
    for job in prep_jobs:
        by_op.setdefault(job.target, job)
    for op, job in by_op.items():
        output = client.results_of([job])[0]
        shown = (f"{len(output)} chunks, first: {output[0][:40]!r}" if op == "chunk"
                 else repr(output)[:60])
        table.add_row(op, prep[op][0][:48], shown)
    for png, job in images[:2]:
        probabilities = client.results_of([job])[0]
        best = int(np.argmax(probabilities))
        with Image.open(io.BytesIO(png)) as image:
            size = f"{image.width}x{image.height}"
        table.add_row("image>toy-vision", f"PNG {size}, {len(png)} bytes",
                      f"class {best} (p={probabilities[best]:.2f}) of {len(probabilities)}")
    console.print(table)


