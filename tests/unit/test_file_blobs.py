"""The file blob store (a real directory) and the in-memory double keep the same contract:
content-addressed, stored once, whole or not at all, damaged blobs never returned, a medium
that fails is a ServiceUnavailable naming the blob store; and open_blob_store picks by URL."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from aidist import codec
from aidist.codec import BlobRef
from aidist.config import Settings
from aidist.errors import ConfigError, ServiceUnavailable
from aidist.testing import InMemoryBlobStore
from db.blob_base import BlobStore
from db.blobs import (
    FileBlobStore,
    S3BlobStore,
    blob_url_of,
    by_reference,
    default_blob_url,
    dereference,
    open_blob_store,
)


@pytest.fixture(params=["file", "memory"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "file":
        return FileBlobStore(tmp_path / "blobs")
    return InMemoryBlobStore()


def test_put_get_delete_round_trip(blobs: BlobStore) -> None:
    payloads = [os.urandom(300_000), b"", b"small"]
    refs = blobs.put_many(payloads)
    assert refs == [BlobRef.of(p) for p in payloads]
    assert all(blobs.exists(ref.key) for ref in refs)
    assert blobs.get_many([r.key for r in refs]) == {r.key: p for r, p in zip(refs, payloads,
                                                                             strict=True)}
    assert blobs.delete([refs[0].key, "0" * 64]) == 1
    assert not blobs.exists(refs[0].key)
    assert blobs.get_many([refs[0].key, refs[2].key]) == {refs[2].key: b"small"}


def test_delete_spares_blobs_put_within_the_grace(blobs: BlobStore) -> None:
    ref = blobs.put(b"fresh")
    assert blobs.delete([ref.key], older_than_s=3600) == 0
    assert blobs.exists(ref.key)
    assert blobs.delete([ref.key]) == 1


def test_identical_payloads_are_stored_once(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    data = os.urandom(50_000)
    first, second = store.put(data), store.put(bytes(data))
    assert first == second
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert files == [store.path(first.key)]
    assert store.path(first.key).relative_to(tmp_path / "blobs").parts == (
        first.key[:2], first.key[2:4], first.key)


def test_a_put_of_stored_bytes_refreshes_the_blob_so_a_prune_spares_it(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    two_hours_ago = time.time() - 7200
    old = store.put(b"old")
    os.utime(store.path(old.key), (two_hours_ago, two_hours_ago))
    reused = store.put(b"reused")
    os.utime(store.path(reused.key), (two_hours_ago, two_hours_ago))
    store.put(b"reused")  # a new row is about to reference it
    assert store.delete([old.key, reused.key], older_than_s=3600) == 1
    assert not store.exists(old.key)
    assert store.exists(reused.key)


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    store.put_many([os.urandom(1000) for _ in range(5)])
    assert not [p for p in (tmp_path / "blobs").rglob("*.tmp")]


def test_a_damaged_blob_is_never_returned(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    ref = store.put(b"the real bytes")
    store.path(ref.key).write_bytes(b"the wrong bytes")
    assert store.get_many([ref.key]) == {}
    assert "damaged" in caplog.text


def test_keys_that_are_not_content_keys_never_become_paths(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.get_many(["../../etc/passwd"])
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.delete(["../x"])


def test_a_medium_that_fails_is_service_unavailable_naming_the_blob_store(tmp_path: Path
                                                                           ) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    store = open_blob_store(f"file://{not_a_directory}/blobs")
    with pytest.raises(ServiceUnavailable, match="blob store") as caught:
        store.put(b"data")
    assert f"file://{not_a_directory}/blobs" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


def test_the_in_memory_store_can_be_down() -> None:
    store = InMemoryBlobStore()
    store.available = False
    with pytest.raises(ServiceUnavailable, match="blob store"):
        store.put(b"data")


def test_open_blob_store_picks_by_url(tmp_path: Path) -> None:
    store = open_blob_store(f"file://{tmp_path}/b")
    assert isinstance(store, FileBlobStore)
    assert store.root == tmp_path / "b"
    home = open_blob_store("file://~/somewhere")
    assert isinstance(home, FileBlobStore)
    assert home.root == Path("~/somewhere").expanduser()
    s3 = open_blob_store("s3://bucket/some/prefix")
    assert isinstance(s3, S3BlobStore)
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.object_name("ab" * 32) == f"some/prefix/ab/{'ab' * 32}"
    s3.close()
    for wrong in ("http://x/y", "file://", "s3://key:secret@bucket/p"):
        with pytest.raises(ConfigError, match="AIDIST_BLOB_URL") as caught:
            open_blob_store(wrong)
        assert "secret" not in str(caught.value)


def test_the_default_location_is_one_directory_per_namespace() -> None:
    assert default_blob_url("prod") == "file://~/.local/share/aidist/blobs/prod"
    assert blob_url_of(Settings(namespace="prod")) == default_blob_url("prod")
    assert blob_url_of(Settings(blob_url="s3://b/p")) == "s3://b/p"
    assert Settings().inline_max_bytes == 256 * 1024


def test_by_reference_stores_only_payloads_over_the_limit(blobs: BlobStore) -> None:
    small, large = b"s" * 10, os.urandom(1000)
    refs = by_reference(blobs, [small, large, large], limit=100)
    assert refs == [None, BlobRef.of(large), BlobRef.of(large)]
    assert blobs.get_many([BlobRef.of(large).key]) == {BlobRef.of(large).key: large}
    assert not blobs.exists(BlobRef.of(small).key)


def test_dereference_reads_each_blob_once_and_gives_none_for_a_gone_one(blobs: BlobStore
                                                                         ) -> None:
    kept, gone = blobs.put(b"kept" * 100), BlobRef.of(b"gone")
    inline = codec.encode("inline")
    values = [codec.encode(kept), inline, None, codec.encode(gone), codec.encode(kept)]
    assert dereference(blobs, values) == [b"kept" * 100, inline, None, None, b"kept" * 100]
