"""The worker's side of large payloads: inputs that arrive as a ``codec.BlobRef`` are read from
the blob store once per flush (one ``get_many`` for the distinct keys of every job about to run)
before any model runs; outputs whose encoding is above ``AIDIST_INLINE_MAX_BYTES`` are stored
as blobs (one ``put_many``) before Redis or the rows see them, so the cache, the durable copy in
the row and the client all hold the reference, and the row's ``blob_keys`` names the blob.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from aidist import codec
from aidist.codec import BlobRef
from aidist.jobs import JobEntry, JobStatus
from db import Outcome
from db.blob_base import BlobStore
from db.blobs import by_reference, live

log = logging.getLogger("aidist.worker")


def needs_blobs(entries: Sequence[JobEntry]) -> bool:
    """Whether any of ``entries`` has its input in the blob store."""
    return any(isinstance(entry.input, BlobRef) for entry in entries)


def fetch_inputs(blobs: BlobStore, entries: Sequence[JobEntry]) -> dict[str, Any]:
    """The decoded inputs that ``entries`` refer to, by blob key, read in one ``get_many``; a
    blob that is gone (or does not decode) is absent, and its jobs fail (``with_inputs``)."""
    keys = list(dict.fromkeys(entry.input.key for entry in entries
                              if isinstance(entry.input, BlobRef)))
    values: dict[str, Any] = {}
    for key, data in blobs.get_many(keys).items() if keys else ():
        try:
            values[key] = codec.decode(data)
        except (ValueError, TypeError) as exc:
            log.error("input blob %s in %s does not decode: %s", key, blobs.url, exc)
    return values


def with_inputs(entries: Sequence[JobEntry], values: Mapping[str, Any], url: str
                ) -> tuple[list[JobEntry], list[tuple[JobEntry, str]]]:
    """``entries`` with their referenced inputs in place (as if they had come inline), and
    those whose blob is not there with the error that fails them."""
    ready: list[JobEntry] = []
    unreadable: list[tuple[JobEntry, str]] = []
    for entry in entries:
        if not isinstance(entry.input, BlobRef):
            ready.append(entry)
        elif entry.input.key in values:
            ready.append(replace(entry, input=values[entry.input.key]))
        else:
            unreadable.append((entry, (
                f"input blob {entry.input.key} ({entry.input.size} bytes) is not in the blob "
                f"store {url}: deleted by a prune, or this worker's AIDIST_BLOB_URL is not the "
                "client's")))
    return ready, unreadable


def outline_results(blobs: BlobStore, results: dict[str, bytes], outcomes: Sequence[Outcome],
                    cache_keys: Mapping[str, str], limit: int
                    ) -> tuple[dict[str, bytes], list[Outcome]]:
    """``results`` (cache key -> encoded output) with each one above ``limit`` bytes stored as a
    blob and replaced by its encoded reference, and ``outcomes`` to match: a succeeded job whose
    result went to the blob store keeps the reference as its durable copy (if it keeps one) and
    names the blob (``blob_key``). ``cache_keys`` maps job ids to their cache keys."""
    keys = [key for key, data in results.items() if len(data) > limit]
    if not keys:
        return results, list(outcomes)
    refs = {key: ref for key, ref in zip(
        keys, by_reference(blobs, [results[key] for key in keys], limit), strict=True)
        if ref is not None}
    encoded = {key: codec.encode(ref) for key, ref in refs.items()}
    changed: list[Outcome] = []
    for outcome in outcomes:
        key = cache_keys.get(outcome.id)
        if outcome.status is JobStatus.SUCCEEDED and key is not None and key in refs:
            changed.append(replace(outcome, blob_key=refs[key].key,
                                   result=encoded[key] if outcome.result is not None else None))
        else:
            changed.append(outcome)
    return {**results, **encoded}, changed


def has_refs(stored: Sequence[bytes | None]) -> bool:
    """Whether any of these stored results is a reference (a large output)."""
    return any(codec.as_blob_ref(data) is not None for data in stored)


def live_results(blobs: BlobStore, stored: Sequence[bytes | None]) -> list[bytes | None]:
    """``stored`` less the references to blobs that are gone (``db.blobs.live``)."""
    return live(blobs, stored)


def ref_key(data: bytes | None) -> str | None:
    """The blob key of a stored result that is a reference (a cache hit on a large output)."""
    ref = codec.as_blob_ref(data)
    return ref.key if ref is not None else None
