"""``InMemoryBlobStore``: the blob store's contract (``db.blob_base.BlobStore``) without a
directory or an S3 server.

Blobs by content key, as ``db.file_blobs.FileBlobStore`` keeps them: a put of bytes already
there stores nothing new and refreshes the blob's time (on ``clock``, which a test may move),
``delete`` spares blobs put within ``older_than_s``, and reads leave out absent keys. Set
``available = False`` and every call raises ``ServiceUnavailable`` naming the blob store, as an
unreachable S3 endpoint does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from aidist.codec import BlobRef, check_blob_key
from aidist.errors import ServiceUnavailable
from db.blob_base import SERVICE

URL = "memory://blobs"


class InMemoryBlobStore:
    """``db.blob_base.BlobStore`` in memory, thread-safe (one lock).

    For tests: ``blobs`` (key -> bytes) is a plain dict to look into or change; ``uploads``
    counts the payloads actually stored (a put of bytes already there does not count);
    ``journal`` records ``blobs.put`` and ``blobs.delete`` as they happen, and may be the same
    list as an ``InMemoryStore``'s, for one timeline.
    """

    def __init__(self, *, journal: list[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = URL
        self.journal: list[str] = journal if journal is not None else []
        self.clock = clock
        self.blobs: dict[str, bytes] = {}
        self.put_at: dict[str, float] = {}
        self.uploads = 0
        self.available = True
        self._lock = threading.Lock()

    def _check(self) -> None:
        if not self.available:
            raise ServiceUnavailable(SERVICE, self.url, "the in-memory blob store is down")

    def put(self, data: bytes) -> BlobRef:
        """Keep ``data`` under its key (once), and note when."""
        return self.put_many([data])[0]

    def put_many(self, payloads: Sequence[bytes]) -> list[BlobRef]:
        """``put`` each payload; references in order."""
        refs = [BlobRef.of(bytes(data)) for data in payloads]
        with self._lock:
            self._check()
            for ref, data in zip(refs, payloads, strict=True):
                if ref.key not in self.blobs:
                    self.blobs[ref.key] = bytes(data)
                    self.uploads += 1
                self.put_at[ref.key] = self.clock()
            if refs:
                self.journal.append("blobs.put")
        return refs

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored blobs among ``keys``."""
        with self._lock:
            self._check()
            return {key: self.blobs[check_blob_key(key)] for key in keys if key in self.blobs}

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        with self._lock:
            self._check()
            return check_blob_key(key) in self.blobs

    def delete(self, keys: Sequence[str], older_than_s: float = 0.0) -> int:
        """Forget these blobs, sparing those put within ``older_than_s``."""
        with self._lock:
            self._check()
            now = self.clock()
            doomed = [key for key in dict.fromkeys(keys) if check_blob_key(key) in self.blobs
                      and (older_than_s <= 0 or now - self.put_at[key] >= older_than_s)]
            for key in doomed:
                del self.blobs[key]
                del self.put_at[key]
            self.journal.append("blobs.delete")
            return len(doomed)

    def close(self) -> None:
        """Nothing to release."""
