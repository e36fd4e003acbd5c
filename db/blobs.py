"""The blob store: payloads too large to travel inline (inputs and outputs above
``AIDIST_INLINE_MAX_BYTES``), kept by content key and referenced by a ``codec.BlobRef``.

Content-addressed (the key is the SHA-256 of the bytes), so identical payloads are stored once
and a stored blob never changes: writers never conflict, a reader checks what it got against the
key, and a put of bytes already there only refreshes the blob's modification time (what a prune
uses to leave alone a blob that a new row is about to reference). Two implementations:
``FileBlobStore`` (``file:///dir``, one host or a shared volume) and ``db.s3_blobs.S3BlobStore``
(``s3://bucket/prefix``); ``open_blob_store`` picks by URL. Every failure of the medium (a
directory that cannot be written, an S3 endpoint that does not answer, refused credentials) is a
``ServiceUnavailable`` naming the blob store and its URL, the driver's error as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from aidist import codec
from aidist.codec import BlobRef
from aidist.config import Settings, redact_url
from aidist.errors import ConfigError
from db.blob_base import SERVICE, BlobStore
from db.file_blobs import FileBlobStore
from db.s3_blobs import S3BlobStore

__all__ = ["DEFAULT_ROOT", "SERVICE", "BlobStore", "FileBlobStore", "S3BlobStore",
           "blob_url_of", "by_reference", "default_blob_url", "dereference", "live",
           "open_blob_store", "open_blob_store_for"]

DEFAULT_ROOT = "~/.local/share/aidist/blobs"


def default_blob_url(namespace: str) -> str:
    """The blob location when ``AIDIST_BLOB_URL`` is unset: a directory per namespace in the
    user's data directory (one host)."""
    return f"file://{DEFAULT_ROOT}/{namespace}"


def blob_url_of(settings: Settings) -> str:
    """``settings.blob_url``, or the default for its namespace."""
    return settings.blob_url or default_blob_url(settings.namespace)


def open_blob_store(url: str, connect_timeout_s: float = 5.0) -> BlobStore:
    """The blob store at ``url``: ``file:///dir`` (``file://~/dir`` for the home directory) or
    ``s3://bucket/prefix``. Nothing is contacted yet; ``ConfigError`` for another scheme."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        root = unquote(parts.netloc + parts.path)
        if not root:
            raise ConfigError("AIDIST_BLOB_URL (blob_url): file:// needs a directory, "
                              "e.g. file:///var/lib/aidist/blobs")
        return FileBlobStore(Path(root).expanduser(), url)
    if parts.scheme == "s3":
        return S3BlobStore.connect(url, connect_timeout_s)
    raise ConfigError(f"AIDIST_BLOB_URL (blob_url): expected file:///dir or "
                      f"s3://bucket/prefix, got {redact_url(url)!r}")


def open_blob_store_for(settings: Settings) -> BlobStore:
    """The blob store these settings name."""
    return open_blob_store(blob_url_of(settings), settings.connect_timeout_s)


def by_reference(blobs: BlobStore, encoded: Sequence[bytes], limit: int) -> list[BlobRef | None]:
    """Store every payload of ``encoded`` longer than ``limit`` bytes in ``blobs`` (one
    ``put_many``) and return its reference there; ``None`` for those that stay inline. Raises
    what the store raises (``ServiceUnavailable``) before anything else is written."""
    large = [index for index, data in enumerate(encoded) if len(data) > limit]
    refs: list[BlobRef | None] = [None] * len(encoded)
    if large:
        for index, ref in zip(large, blobs.put_many([encoded[i] for i in large]), strict=True):
            refs[index] = ref
    return refs


def dereference(blobs: BlobStore, encoded: Sequence[bytes | None]) -> list[bytes | None]:
    """``encoded`` with every value that is an encoded ``BlobRef`` replaced by the blob's bytes
    (one ``get_many`` for the distinct keys), or by ``None`` where the blob is gone (pruned,
    damaged): the caller treats that as a result it does not have."""
    refs = [codec.as_blob_ref(data) for data in encoded]
    keys = list(dict.fromkeys(ref.key for ref in refs if ref is not None))
    if not keys:
        return list(encoded)
    found = blobs.get_many(keys)
    return [data if ref is None else found.get(ref.key)
            for data, ref in zip(encoded, refs, strict=True)]


def live(blobs: BlobStore, encoded: Sequence[bytes | None]) -> list[bytes | None]:
    """``encoded`` (stored results), less the references to blobs no longer stored (pruned
    while the reference lived on in Redis): ``None`` there, so the job runs again rather than
    end with a result nobody can read. One ``exists`` per distinct reference; values that are
    not references cost nothing."""
    refs = [codec.as_blob_ref(data) for data in encoded]
    distinct = {ref.key for ref in refs if ref is not None}
    gone = {key for key in distinct if not blobs.exists(key)}
    return [None if ref is not None and ref.key in gone else data
            for data, ref in zip(encoded, refs, strict=True)]

