"""The celery-batches baseline: Celery's ``Batches`` task class buffers single-sentence messages
and hands them to one call as a list, so the model runs on batches of up to ``flush_every``.

Runs only in ``bench/.venv-batches`` (celery-batches pins an older Celery; ``bench.batches_env``
builds that venv). Worker, as the driver starts it::

    bench/.venv-batches/bin/celery -A bench.celery_batches_app worker -P solo \
        -Q <prefix>.bench.batches.embed

One process holds the model (``solo`` pool; ``--batches-pool prefork`` runs one prefork child
instead) with all cores' torch threads. Results go to the Redis backend one per request with
``mark_as_done``, as the celery-batches documentation shows. Producers send plain single-sentence
tasks by name (``bench.batches.embed``), so the driver needs no celery-batches.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from celery_batches import Batches, SimpleRequest

from bench import celery_common as common

app = Celery("bench_batches")
common.configure_from_env(app, [common.BATCHES_EMBED])

FLUSH_EVERY = int(os.environ.get(common.ENV_FLUSH_EVERY, "64"))
FLUSH_INTERVAL = float(os.environ.get(common.ENV_FLUSH_INTERVAL, "0.01"))

_loaded: dict[str, Any] = {}


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _load_model(**_: Any) -> None:
    _loaded["minilm"] = common.load_minilm(int(os.environ.get(common.ENV_TORCH_THREADS, "0")))
    common.mark_ready()


@app.task(name=common.BATCHES_EMBED, base=Batches, flush_every=FLUSH_EVERY,
          flush_interval=FLUSH_INTERVAL)  # type: ignore[untyped-decorator]
def embed(requests: list[SimpleRequest]) -> None:
    """Embed the buffered sentences in one model call and store each request's result."""
    texts = [request.args[0] for request in requests]
    vectors = _loaded["minilm"](texts, {})
    for request, vector in zip(requests, vectors, strict=True):
        app.backend.mark_as_done(request.id, vector.tolist(), request=request)
