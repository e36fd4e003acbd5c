"""Running a group of jobs that share a model, version and params through that model: batches
of the model's size, similar lengths together, arrays only with arrays of their own dtype and
shape (a model stacks a batch into one tensor), identical inputs once, a thread-safe model's
batches side by side on a CPU, a failing batch re-run item by item (one bad input fails only its
own job), transient errors retried with backoff.
"""

from __future__ import annotations

import logging
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from aidist.errors import AidistError, InvalidInput, TransientError
from aidist.jobs import JobEntry
from models import Runner
from workers.runtime import WorkerRuntime

log = logging.getLogger("aidist.worker")
MAX_ERROR_CHARS = 2000


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS]


TRANSIENT_WAIT = wait_exponential_jitter(multiplier=0.2, max=5.0)


def _call(runner: Runner, inputs: list[Any], params: dict[str, Any], retries: int) -> list[Any]:
    """One model call, tried again with backoff and jitter while it raises ``TransientError``."""
    retrying = Retrying(retry=retry_if_exception_type(TransientError), wait=TRANSIENT_WAIT,
                        stop=stop_after_attempt(retries + 1), reraise=True)
    outputs: list[Any] = retrying(runner, inputs, params)
    return outputs


def _run_batch(runner: Runner, inputs: Sequence[Any], params: dict[str, Any],
               retries: int = 0) -> list[tuple[Any, str | None]]:
    """Outputs (or error texts) for a batch; if the batch call fails (a bad input, or running out
    of memory on the whole batch), each item runs alone so one bad input fails only its own job.
    A ``TransientError`` is retried first, ``retries`` times."""
    try:
        outputs = _call(runner, list(inputs), params, retries)
        if len(outputs) != len(inputs):
            raise RuntimeError(f"model returned {len(outputs)} outputs for {len(inputs)} inputs")
        return [(output, None) for output in outputs]
    except TransientError as still_failing:  # not about one input: no item-by-item re-run
        log.warning("a batch of %d failed %d times: %s", len(inputs), retries + 1, still_failing)
        return [(None, error_text(still_failing)) for _ in inputs]
    except Exception as batch_error:
        if len(inputs) == 1:
            log.debug("an input failed: %s", batch_error)  # the executor names its job
            return [(None, error_text(batch_error))]
        log.info("a batch of %d failed (%s); running its items one by one", len(inputs),
                 batch_error)
    results: list[tuple[Any, str | None]] = []
    for value in inputs:
        try:
            (output,) = _call(runner, [value], params, retries)
            results.append((output, None))
        except Exception as exc:
            log.debug("an input failed: %s", exc)
            results.append((None, error_text(exc)))
    return results


def _layout(value: Any) -> tuple[str, tuple[int, ...]] | None:
    """What an input must share with the others of its batch: an array its dtype and shape;
    anything else nothing."""
    return (value.dtype.str, value.shape) if isinstance(value, np.ndarray) else None


def _length(item: tuple[int, int, Any]) -> int:
    return len(item[2]) if isinstance(item[2], str | list) else 0


def _sort_key(runner: Runner, items: list[tuple[int, int, Any]]
              ) -> Callable[[tuple[int, int, Any]], int]:
    """How a flush's items are sorted: by the runner's own ``lengths`` where it has them
    (``models.registry.MeasuresInputs``: tokens, what the model pads by), else by characters. A
    lone item needs no order; a ``lengths`` that fails or miscounts falls back to characters (it
    only orders the batches, and every input still runs)."""
    measure = getattr(runner, "lengths", None)
    if measure is None or len(items) < 2:
        return _length
    try:
        counted = [int(n) for n in measure([value for _, _, value in items])]
    except Exception:
        log.warning("lengths() of a runner failed; its flush is sorted by characters",
                    exc_info=True)
        return _length
    if len(counted) != len(items):
        log.warning("lengths() of a runner gave %d lengths for %d inputs; its flush is sorted by "
                    "characters", len(counted), len(items))
        return _length
    by_item = {(index, position): n
               for (index, position, _), n in zip(items, counted, strict=True)}
    return lambda item: by_item[(item[0], item[1])]


def _buckets(items: list[tuple[int, int, Any]],
             key: Callable[[tuple[int, int, Any]], int] = _length
             ) -> list[list[tuple[int, int, Any]]]:
    """Items split by layout (arrays of one dtype and shape together, never stacked with
    others), each bucket sorted by length (``key``): similar lengths share a batch, so less
    padding and more items per second on the same model."""
    by_layout: dict[tuple[str, tuple[int, ...]] | None, list[tuple[int, int, Any]]] = {}
    for item in items:
        by_layout.setdefault(_layout(item[2]), []).append(item)
    buckets = list(by_layout.values())
    for bucket in buckets:
        bucket.sort(key=key)
    return buckets


def run_group(runtime: WorkerRuntime, target: str, version: str, group: list[JobEntry]
               ) -> list[tuple[JobEntry, Any, str | None]]:
    """Run jobs that share model, version and params, in batches of the model's size. An
    ``each`` entry (a pipeline step after a step that returned a list) contributes every item of
    its list to the batches and gets the list of outputs back."""
    try:
        spec = runtime.registry.get(target)
        have = runtime.registry.version(target)
        if have != version:
            raise AidistError(
                f"model {target!r} version mismatch: job wants {version}, this worker has {have}; "
                "run workers and clients from the same release"
            )
        runner = runtime.runner(target)
    except AidistError as exc:
        return [(entry, None, str(exc)) for entry in group]
    except Exception as exc:  # a plugin's version function or registry bug: fail, do not crash
        return [(entry, None, error_text(exc)) for entry in group]
    errors: dict[int, str] = {}
    items: list[tuple[int, int, Any]] = []  # (entry index, position in its list, input)
    same_as: dict[int, int] = {}  # identical jobs (same cache key) run once: duplicate -> first
    first_with_key: dict[str, int] = {}
    for index, entry in enumerate(group):
        if not entry.each:
            try:
                runtime.registry.validate_input(spec, entry.input)
            except InvalidInput as exc:  # published around the client: checked here as well
                errors[index] = str(exc)
                continue
            if entry.cache_key in first_with_key:
                same_as[index] = first_with_key[entry.cache_key]
                continue
            first_with_key[entry.cache_key] = index
            items.append((index, 0, entry.input))
            continue
        try:
            for value in entry.input:
                runtime.registry.validate_input(spec, value)
        except InvalidInput as exc:
            errors[index] = f"pipeline step {target}: {exc}"
            continue
        items.extend((index, position, value) for position, value in enumerate(entry.input))
    outputs: dict[int, dict[int, Any]] = defaultdict(dict)
    params = group[0].params
    threads = runtime.batch_threads if spec.thread_safe else 1
    size = max(spec.max_batch_size, 1)
    if threads > 1:  # a small flush is shared out too, so every core has a part of it
        size = max(1, min(size, -(-len(items) // threads)))
    buckets = _buckets(items, _sort_key(runner, items))
    batches = [bucket[start : start + size] for bucket in buckets
               for start in range(0, len(bucket), size)]

    def run(batch: list[tuple[int, int, Any]]) -> list[tuple[Any, str | None]]:
        try:
            return _run_batch(runner, [value for _, _, value in batch], params,
                              runtime.settings.transient_retries)
        except Exception:  # a runner bug outside any one input: fail the batch, keep the worker
            text = traceback.format_exc(limit=3)[-MAX_ERROR_CHARS:]
            return [(None, text) for _ in batch]

    for batch, pairs in zip(batches, runtime.map_batches(run, batches, threads), strict=True):
        for (index, position, _), (output, error) in zip(batch, pairs, strict=True):
            if error is not None:
                errors.setdefault(index, error)
            outputs[index][position] = output
    out: list[tuple[JobEntry, Any, str | None]] = []
    for index, entry in enumerate(group):
        source = same_as.get(index, index)
        if source in errors:
            out.append((entry, None, errors[source]))
        else:
            ordered = [outputs[source][position] for position in range(len(outputs[source]))]
            out.append((entry, ordered if entry.each else ordered[0], None))
    return out
