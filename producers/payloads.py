"""The client's side of large payloads: inputs above ``AIDIST_INLINE_MAX_BYTES`` go to the blob
store before anything else is written, and travel (in the row and the message) as a
``codec.BlobRef``; results that are references are read from the blob store.

Order is what keeps a submission whole: the blobs are put first, so a blob store that is down
fails the call with ``ServiceUnavailable`` before any row or message exists, and a row never
names a blob that is not there. The cache key is computed over the encoded input itself (before
it is replaced by its reference), so an input sent by reference and the same input sent inline
share results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from aidist import codec
from aidist.codec import BlobRef
from db.blob_base import BlobStore
from db.blobs import by_reference
from producers.submission import Request


def offload(blobs: BlobStore, requests: Sequence[Request], limit: int) -> list[Request]:
    """``requests`` with every encoded input above ``limit`` bytes stored in ``blobs`` (one
    ``put_many``) and replaced by its reference, as input and as payload."""
    refs = by_reference(blobs, [r.payload for r in requests], limit)
    return [r if ref is None else replace(r, input=ref, payload=codec.encode(ref))
            for r, ref in zip(requests, refs, strict=True)]


def blob_keys(request: Request, hit: bytes | None) -> tuple[str, ...]:
    """The blobs a new row references: its input's, and a cache hit's result's."""
    refs: list[BlobRef | None] = [codec.as_blob_ref(request.payload), codec.as_blob_ref(hit)]
    return tuple(dict.fromkeys(ref.key for ref in refs if ref is not None))
