"""``FileBlobStore``: blobs as files in a directory (``file:///dir``), for one host or a volume
every client and worker mounts."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aidist.codec import BlobRef, check_blob_key
from aidist.config import redact_url
from aidist.errors import ServiceUnavailable
from db.blob_base import SERVICE, verified


class FileBlobStore:
    """Blobs as files under ``root``, fanned out by the key's first two byte pairs
    (``ab/cd/abcd...``) so no directory holds millions of entries. A write goes to a temporary
    file in the target directory, is flushed to disk, then renamed into place: a reader sees a
    whole blob or none, and a crash leaves at most a stray ``.tmp`` file."""

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root = root
        self.url = redact_url(url) if url is not None else f"file://{root}"

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise ServiceUnavailable(SERVICE, self.url,
                                     f"{exc.strerror or type(exc).__name__}{where}") from exc

    def path(self, key: str) -> Path:
        """Where the blob of ``key`` lives (whether or not it is there)."""
        check_blob_key(key)
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes) -> BlobRef:
        """Write ``data`` unless it is there already (then refresh its modification time)."""
        ref = BlobRef.of(data)
        target = self.path(ref.key)
        with self._guard():
            try:
                os.utime(target)
                return ref
            except FileNotFoundError:
                pass
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{ref.key[:16]}.",
                                                 suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        return ref

    def put_many(self, payloads: Sequence[bytes]) -> list[BlobRef]:
        """``put`` each payload, in order."""
        return [self.put(data) for data in payloads]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The intact blobs among ``keys`` (a file whose bytes do not hash to its name is
        reported in the log and left out, never returned)."""
        found: dict[str, bytes] = {}
        for key in dict.fromkeys(keys):
            path = self.path(key)
            with self._guard():
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
            if verified(key, data, self.url):
                found[key] = data
        return found

    def exists(self, key: str) -> bool:
        """Whether the blob's file is there."""
        path = self.path(key)
        with self._guard():
            return path.is_file()

    def delete(self, keys: Sequence[str], older_than_s: float = 0.0) -> int:
        """Remove the blobs' files, sparing those written or refreshed within ``older_than_s``
        seconds."""
        deleted = 0
        cutoff = time.time() - older_than_s
        for key in dict.fromkeys(keys):
            path = self.path(key)
            with self._guard():
                try:
                    if older_than_s > 0 and path.stat().st_mtime > cutoff:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
            deleted += 1
        return deleted

    def close(self) -> None:
        """Nothing to release."""
