"""A test model whose load a test holds open (AIDIST_PLUGINS=tests.startup_plugins).

``gated-load`` marks that its load began (``$AIDIST_TEST_EXEC_LOG/loading``), then waits until
the test opens the gate (``tests.plugins.GATE_FILE``): a gpu worker is then past its start-up
wait for the services and not yet connected to the broker through Celery, so a test can take
the broker away at exactly that moment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aidist import JobKind, LoadContext, ModelSpec, Registry, Runner
from tests.plugins import EXEC_LOG_ENV, wait_for_gate

LOADING_FILE = "loading"


def load_gated(context: LoadContext) -> Runner:
    directory = os.environ.get(EXEC_LOG_ENV)
    if directory is None:
        raise RuntimeError(f"gated-load needs ${EXEC_LOG_ENV}")
    (Path(directory) / LOADING_FILE).touch()
    wait_for_gate(directory)

    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        return [f"gated:{text}" for text in inputs]

    return run


def register_models(registry: Registry) -> None:
    """Plugin hook: add the gated model."""
    registry.register(ModelSpec(name="gated-load", kind=JobKind.INFER, loader=load_gated,
                                version="gated-1", pool="gpu", max_batch_size=8))
