"""The naive baseline: plain Celery, one task per sentence (or per text), JSON, Redis results.

Worker (the driver starts it this way, with the ``BENCH_*`` environment)::

    celery -A bench.celery_naive worker -P prefork -c 2 -Q <prefix>.bench.naive.embed

Each prefork child loads MiniLM with ``models.minilm.load`` in ``worker_process_init`` (when
``BENCH_LOAD_MODEL=1``) with ``BENCH_TORCH_THREADS`` torch threads (the driver passes 1: two
children x one thread = the two cores, no oversubscription). ``normalize`` runs aidist's
``models.ops.normalize_text``, so the tiny-jobs comparison does exactly the same work.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from bench import celery_common as common

app = Celery("bench_naive")
common.configure_from_env(app, [common.NAIVE_EMBED, common.NAIVE_NORMALIZE])

_loaded: dict[str, Any] = {}


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _load_model(**_: Any) -> None:
    if os.environ.get(common.ENV_LOAD_MODEL) == "1":
        _loaded["minilm"] = common.load_minilm(int(os.environ.get(common.ENV_TORCH_THREADS, "1")))
    common.mark_ready()


@app.task(name=common.NAIVE_EMBED)  # type: ignore[untyped-decorator]
def embed(text: str) -> list[float]:
    """One sentence -> its 384 floats (a JSON list)."""
    vector = _loaded["minilm"]([text], {})[0]
    return list(vector.tolist())


@app.task(name=common.NAIVE_NORMALIZE)  # type: ignore[untyped-decorator]
def normalize(text: str) -> str:
    """aidist's ``normalize`` op on one text."""
    from models.ops import normalize_text

    return normalize_text(text)
