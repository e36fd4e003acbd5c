"""Preprocessing ops: plain functions over batches of text, with their params validators."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from aidist.errors import InvalidInput
from models.registry import LoadContext, Runner
from models.weights import minilm_dir

_SPACES = re.compile(r"\s+")
# The control characters (category Cc) of ASCII other than the whitespace normalize keeps: in
# ASCII, category C is exactly these, so an ASCII text needs no per-character look-up.
_ASCII_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_TOKENS = 256


def _int_param(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"param {name!r} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _reject_unknown(params: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(params) - allowed
    if unknown:
        raise InvalidInput(f"unknown params {sorted(unknown)}; allowed: {sorted(allowed)}")


def normalize_text(text: str, *, lowercase: bool = False) -> str:
    """NFKC-normalise, drop control characters, collapse whitespace runs, strip the ends."""
    text = unicodedata.normalize("NFKC", text)
    if text.isascii():  # most texts: one regex pass instead of a category look-up per character
        text = _ASCII_CONTROLS.sub("", text)
    elif not text.isprintable():  # printable: no character of category C, nothing to drop
        text = "".join(ch for ch in text
                       if ch in "\t\n\r " or unicodedata.category(ch)[0] != "C")
    text = _SPACES.sub(" ", text).strip()
    return text.lower() if lowercase else text


def validate_normalize_params(params: dict[str, Any]) -> dict[str, Any]:
    """``lowercase``: bool, default False."""
    _reject_unknown(params, {"lowercase"})
    lowercase = params.get("lowercase", False)
    if not isinstance(lowercase, bool):
        raise InvalidInput(f"param 'lowercase' must be true or false, got {lowercase!r}")
    return {"lowercase": lowercase} if lowercase else {}


def chunk_text(text: str, *, size: int, overlap: int) -> list[str]:
    """Split ``text`` into windows of ``size`` words, each sharing ``overlap`` words with the
    last."""
    words = text.split()
    step = size - overlap
    chunks = []
    for start in range(0, max(len(words) - overlap, 1), step):
        chunks.append(" ".join(words[start : start + size]))
    return chunks


def validate_chunk_params(params: dict[str, Any]) -> dict[str, Any]:
    """``size`` words per window (default 128), ``overlap`` words (default 32, below size)."""
    _reject_unknown(params, {"size", "overlap"})
    size = _int_param(params, "size", 128, 1, 10_000)
    overlap = _int_param(params, "overlap", min(32, size - 1), 0, size - 1)
    return {"size": size, "overlap": overlap}


def load_normalize(context: LoadContext) -> Runner:
    """Runner for ``normalize``."""

    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        lowercase = bool(params.get("lowercase", False))
        return [normalize_text(text, lowercase=lowercase) for text in inputs]

    return run


def load_chunk(context: LoadContext) -> Runner:
    """Runner for ``chunk``."""

    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        checked = validate_chunk_params(params)
        return [chunk_text(text, **checked) for text in inputs]

    return run


def load_tokenizer() -> Tokenizer:
    """The MiniLM WordPiece tokenizer from the bundled ``tokenizer.json``, truncating at 256."""
    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.no_padding()
    return tokenizer


def load_tokenize(context: LoadContext) -> Runner:
    """Runner for ``tokenize``: MiniLM token ids, with [CLS]/[SEP]."""
    tokenizer = load_tokenizer()

    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        return [encoding.ids for encoding in tokenizer.encode_batch(list(inputs))]

    return run
