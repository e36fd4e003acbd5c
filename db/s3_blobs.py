"""``S3BlobStore``: blobs as objects in an S3-compatible store (``s3://bucket/prefix``), through
boto3.

Credentials, endpoint and region come from boto3's usual sources (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``~/.aws``, an
instance or pod role), so a deployment configures aidist's S3 as it configures any other S3
client. Objects are named ``<prefix>/<key[:2]>/<key>``. A put asks first whether the object is
there (HEAD): identical payloads are uploaded once, and again only to refresh one not written
for ``REFRESH_S`` (so that its modification time tells a prune that a new row may reference it).
Ages are measured on the server's clock (its ``Date`` header), never against this host's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from aidist.codec import BlobRef, check_blob_key
from aidist.config import redact_url
from aidist.errors import ConfigError, ServiceUnavailable
from db.blob_base import SERVICE, verified

REFRESH_S = 3600.0  # a put of a blob older than this uploads it again (its age restarts)
PARALLEL = 8  # objects moved at once by put_many / get_many
DELETE_CHUNK = 1000  # S3's limit per DeleteObjects
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
T = TypeVar("T")


class S3BlobStore:
    """Blobs in ``bucket`` under ``prefix``. Thread-safe (a boto3 client is)."""

    def __init__(self, client: Any, bucket: str, prefix: str, url: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
        where = redact_url(url)
        self.url = f"{where} (endpoint {redact_url(endpoint)})" if endpoint else where

    @classmethod
    def connect(cls, url: str, connect_timeout_s: float = 5.0) -> S3BlobStore:
        """A store for ``s3://bucket/prefix``; nothing is contacted until the first call."""
        parts = urlsplit(url)
        if not parts.netloc or "@" in parts.netloc:
            raise ConfigError("AIDIST_BLOB_URL (blob_url): expected s3://bucket/prefix, with "
                              "credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        config = Config(connect_timeout=connect_timeout_s, read_timeout=max(60.0,
                        connect_timeout_s), retries={"mode": "standard", "max_attempts": 3},
                        max_pool_connections=PARALLEL * 2)
        client = boto3.session.Session().client("s3", config=config)
        return cls(client, parts.netloc, parts.path, url)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "?"), error.get("Message", "")
            hint = f"; create bucket {self.bucket!r}" if code == "NoSuchBucket" else ""
            raise ServiceUnavailable(SERVICE, self.url, f"{code} {message}".strip() + hint
                                     ) from exc
        except BotoCoreError as exc:
            raise ServiceUnavailable(SERVICE, self.url, str(exc)) from exc

    def object_name(self, key: str) -> str:
        """The object that holds blob ``key``."""
        check_blob_key(key)
        name = f"{key[:2]}/{key}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _head(self, key: str) -> dict[str, Any] | None:
        with self._guard():
            try:
                head: dict[str, Any] = self.client.head_object(Bucket=self.bucket,
                                                               Key=self.object_name(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                    return None
                raise
        return head

    def put(self, data: bytes) -> BlobRef:
        """Upload ``data`` unless an object with its key was written in the last
        ``REFRESH_S``."""
        ref = BlobRef.of(data)
        head = self._head(ref.key)
        if head is not None and _age_s(head) < REFRESH_S:
            return ref
        with self._guard():
            self.client.put_object(Bucket=self.bucket, Key=self.object_name(ref.key),
                                   Body=data, ContentType="application/octet-stream")
        return ref

    def put_many(self, payloads: Sequence[bytes]) -> list[BlobRef]:
        """``put`` each payload, several at once; references in order."""
        return _parallel(self.put, list(payloads))

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The intact blobs among ``keys``, several downloads at once."""
        unique = list(dict.fromkeys(keys))
        found = _parallel(self._get, unique)
        return {key: data for key, data in zip(unique, found, strict=True)
                if data is not None and verified(key, data, self.url)}

    def _get(self, key: str) -> bytes | None:
        with self._guard():
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self.object_name(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                    return None
                raise
            data: bytes = response["Body"].read()
        return data

    def exists(self, key: str) -> bool:
        """Whether the blob's object is there (one HEAD)."""
        return self._head(key) is not None

    def delete(self, keys: Sequence[str], older_than_s: float = 0.0) -> int:
        """Delete the blobs' objects (DeleteObjects, 1000 a request), sparing those written
        within ``older_than_s`` seconds (one HEAD each to learn their age). Returns how many
        objects were there and went."""
        unique = list(dict.fromkeys(keys))
        heads = _parallel(self._head, unique)
        doomed = [key for key, head in zip(unique, heads, strict=True)
                  if head is not None and (older_than_s <= 0 or _age_s(head) >= older_than_s)]
        for start in range(0, len(doomed), DELETE_CHUNK):
            chunk = doomed[start : start + DELETE_CHUNK]
            with self._guard():
                response = self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self.object_name(key)} for key in chunk],
                    "Quiet": True})
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise ServiceUnavailable(SERVICE, self.url, f"could not delete {len(errors)} "
                                         f"blobs: {first.get('Code')} {first.get('Message')}")
        return len(doomed)

    def close(self) -> None:
        """Close the client's pooled connections."""
        self.client.close()


def _age_s(head: dict[str, Any]) -> float:
    """Seconds since the object was written, on the server's clock."""
    modified: datetime = head["LastModified"]
    date = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    now = parsedate_to_datetime(date) if date else datetime.now(modified.tzinfo)
    return (now - modified).total_seconds()


def _parallel(call: Callable[[str], T] | Callable[[bytes], T], items: list[Any]) -> list[T]:
    """``call`` on each item, up to ``PARALLEL`` at once; results in order, the first error
    raised."""
    if len(items) <= 1:
        return [call(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(items)),
                            thread_name_prefix="aidist-blobs") as pool:
        return list(pool.map(call, items))
