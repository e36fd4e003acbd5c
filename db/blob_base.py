"""What every blob store is: the ``BlobStore`` contract, the name failures give it, and the check
that a blob read back is the one its key names. ``db.blobs`` says what a blob store is for."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from aidist.codec import BlobRef, blob_key

SERVICE = "blob store"

log = logging.getLogger("aidist.blobs")


class BlobStore(Protocol):
    """Blobs by content key. Thread-safe. ``url`` is where they are (no secrets), for
    messages."""

    url: str

    def put(self, data: bytes) -> BlobRef:
        """Store ``data`` (or refresh it, if it is there) and return its reference."""
        ...

    def put_many(self, payloads: Sequence[bytes]) -> list[BlobRef]:
        """``put`` each of ``payloads``; references in the same order."""
        ...

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The bytes of each key found (and intact); a key that is absent is absent here."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob with this key is stored."""
        ...

    def delete(self, keys: Sequence[str], older_than_s: float = 0.0) -> int:
        """Delete these blobs, except those put (or refreshed) less than ``older_than_s``
        seconds ago; absent keys are skipped. Returns how many were deleted."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def verified(key: str, data: bytes, url: str) -> bool:
    """Whether ``data`` is the blob ``key`` names; a mismatch (a damaged medium, a file changed
    by hand) is logged and the blob treated as missing, so no wrong bytes ever reach a model or
    a client."""
    if blob_key(data) == key:
        return True
    log.error("blob %s in %s is damaged (its bytes do not match its key): treated as missing",
              key, url)
    return False
