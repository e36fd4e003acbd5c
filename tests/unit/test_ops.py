"""models.ops: normalize, chunk and tokenize, as functions and as registry runners."""

from __future__ import annotations

import itertools
import re
import unicodedata

import pytest

from models.ops import (
    MAX_TOKENS,
    chunk_text,
    load_chunk,
    load_normalize,
    load_tokenize,
    normalize_text,
)
from models.registry import LoadContext, Runner
from models.weights import minilm_dir


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\ufb01ne", "fine"),  # ligature fi -> f + i (NFKC)
        ("\uff21\uff22\uff23", "ABC"),  # full-width letters
        ("\u2460 and \u00bd", "1 and 1\u20442"),  # circled one, vulgar fraction
        ("cafe\u0301", "caf\u00e9"),  # combining accent composed
        ("a\u00a0b", "a b"),  # no-break space
        ("a\u2003\u2009b", "a b"),  # em space, thin space
        ("a\u200bb", "ab"),  # zero-width space (format character) dropped
        ("a\x00b\x07c\x1bd", "abcd"),  # control characters dropped
        ("  a \t\n b\r\n\r\n  c  ", "a b c"),  # whitespace runs collapsed, ends stripped
        ("line1\u2028line2", "line1 line2"),  # line separator is whitespace
        ("already clean", "already clean"),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def _normalize_char_by_char(text: str) -> str:
    """normalize_text as first written: a category look-up for every character."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if ch in "\t\n\r " or unicodedata.category(ch)[0] != "C")
    return re.sub(r"\s+", " ", text).strip()


def test_normalize_fast_paths_match_the_look_up_of_every_character() -> None:
    # Every code point (in runs of 64, each run once alone and once among ASCII text, tabs and
    # control characters), and all of ASCII: the ASCII and printable shortcuts drop exactly
    # what the per-character look-up drops.
    ascii_all = "".join(map(chr, range(128)))
    texts = [ascii_all, ascii_all * 3, "plain text", "caf\u00e9 au lait", "\u00e9\x07"]
    for start in range(0, 0x110000, 64):
        run = "".join(map(chr, range(start, min(start + 64, 0x110000))))
        texts += [run, f"a\tb {run} \x07c\x1b d\n"]
    mismatched = [t for t in texts if normalize_text(t) != _normalize_char_by_char(t)]
    assert not mismatched, [ascii(t[:80]) for t in mismatched[:3]]


def test_normalize_keeps_case_unless_asked() -> None:
    assert normalize_text("Hello WORLD \u00c4") == "Hello WORLD \u00c4"
    assert normalize_text("Hello WORLD \u00c4", lowercase=True) == "hello world \u00e4"


@pytest.mark.parametrize(
    "raw", ["  \ufb01 \u00a0 X\u200b\ty \n", "\u2460\u2461 cafe\u0301", "plain", "\x00 \x00"],
)
def test_normalize_is_idempotent(raw: str) -> None:
    once = normalize_text(raw, lowercase=True)
    assert normalize_text(once, lowercase=True) == once


def test_normalize_runner_applies_lowercase_param() -> None:
    run = load_normalize(LoadContext())
    assert run(["  A\u00a0 B ", "C"], {}) == ["A B", "C"]
    assert run(["  A\u00a0 B ", "C"], {"lowercase": True}) == ["a b", "c"]


def _words(count: int) -> list[str]:
    return [f"w{i}" for i in range(count)]


def test_chunk_example() -> None:
    text = "a b c d e f g h i j"
    assert chunk_text(text, size=4, overlap=1) == ["a b c d", "d e f g", "g h i j"]
    assert chunk_text(text, size=4, overlap=0) == ["a b c d", "e f g h", "i j"]


@pytest.mark.parametrize("count", [1, 2, 5])
def test_short_text_is_one_chunk(count: int) -> None:
    words = _words(count)
    assert chunk_text("  ".join(words), size=5, overlap=2) == [" ".join(words)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_chunk_windows_cover_every_word_with_the_asked_overlap(size: int) -> None:
    for overlap in range(size):
        for count in range(1, 30):
            words = _words(count)
            chunks = [c.split() for c in chunk_text(" ".join(words), size=size, overlap=overlap)]
            label = f"size={size} overlap={overlap} words={count}"
            assert chunks, label
            assert all(len(chunk) <= size for chunk in chunks), label
            assert all(len(chunk) == size for chunk in chunks[:-1]), label
            rebuilt = list(chunks[0])
            for previous, current in itertools.pairwise(chunks):
                assert previous[len(previous) - overlap:] == current[:overlap], label
                assert len(current) > overlap, f"{label}: a window adds no new word"
                rebuilt.extend(current[overlap:])
            assert rebuilt == words, label


def test_chunk_runner_uses_defaults_and_params() -> None:
    run = load_chunk(LoadContext())
    text = " ".join(_words(300))
    (default_chunks,) = run([text], {})
    assert default_chunks == chunk_text(text, size=128, overlap=32)
    assert len(default_chunks[0].split()) == 128
    assert default_chunks[1].split()[:32] == default_chunks[0].split()[-32:]
    small = run([text, "x y z"], {"size": 100, "overlap": 0})
    assert [len(c) for c in small] == [3, 1]


@pytest.fixture(scope="module")
def tokenize() -> Runner:
    return load_tokenize(LoadContext())


def _vocab_id(token: str) -> int:
    return (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines().index(token)


def test_tokenize_wraps_with_cls_and_sep(tokenize: Runner) -> None:
    (ids,) = tokenize(["hello world"], {})
    assert ids[0] == 101 == _vocab_id("[CLS]")
    assert ids[-1] == 102 == _vocab_id("[SEP]")
    assert ids[1:-1] == [_vocab_id("hello"), _vocab_id("world")]


def test_tokenize_is_uncased(tokenize: Runner) -> None:
    assert tokenize(["HELLO World"], {}) == tokenize(["hello world"], {})


def test_tokenize_batch_is_unpadded_and_in_order(tokenize: Runner) -> None:
    short, longer = tokenize(["hi", "a somewhat longer sentence here"], {})
    assert len(short) < len(longer)
    assert tokenize(["hi"], {}) == [short]
    assert 0 not in short  # no [PAD]


def test_tokenize_truncates_at_256(tokenize: Runner) -> None:
    (ids,) = tokenize(["word " * 1000], {})
    assert MAX_TOKENS == 256
    assert len(ids) == 256
    assert ids[0] == 101
    assert ids[-1] == 102
