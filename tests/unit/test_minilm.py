"""models.minilm against sentence-transformers, both on the bundled all-MiniLM-L6-v2 weights.

The only unit module that loads the real model (a few seconds).
"""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from aidist.demo import make_corpus
from models import build_registry
from models.minilm import CPU_SUB_BATCH, DIMENSION
from models.ops import load_tokenizer
from models.registry import LoadContext, Runner
from models.weights import minilm_dir

SENTENCES = [
    "hi",
    "A worker takes messages, forms batches and writes results to Redis.",
    "Ünïcödé text, emoji 🙂 and punctuation!?",
    "Durable jobs: producers publish to RabbitMQ, Celery workers consume them, results are "
    "cached in Redis under a content key, and every job's state lives in Postgres. " * 3,
    "token " * 400,  # longer than the 256-token window: truncated the same way by both
]


@pytest.fixture(scope="module")
def runner() -> Runner:
    return build_registry().get("minilm").load(LoadContext(device="cpu"))


@pytest.fixture(scope="module")
def ours(runner: Runner) -> np.ndarray:
    return np.stack(runner(SENTENCES, {}))


@pytest.fixture(scope="module")
def st_model() -> SentenceTransformer:
    return SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def reference(st_model: SentenceTransformer) -> np.ndarray:
    return np.asarray(st_model.encode(SENTENCES, normalize_embeddings=True))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1) / norms)


def test_outputs_are_384_float32(runner: Runner) -> None:
    outputs = runner(SENTENCES[:2], {})
    assert len(outputs) == 2
    for row in outputs:
        assert isinstance(row, np.ndarray)
        assert row.dtype == np.float32
        assert row.shape == (DIMENSION,) == (384,)


def test_outputs_are_unit_length(ours: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_matches_sentence_transformers(ours: np.ndarray, reference: np.ndarray) -> None:
    assert reference.shape == ours.shape
    cosines = _cosines(ours, reference)
    assert np.all(cosines >= 0.9999), cosines


def test_big_batch_matches_sentence_transformers_in_order(runner: Runner,
                                                          st_model: SentenceTransformer) -> None:
    """A batch over CPU_SUB_BATCH runs as token-sorted sub-batches: outputs still come back in
    input order, each equal to encode's on the same batch."""
    sentences = make_corpus(2 * CPU_SUB_BATCH + 7, 15) + SENTENCES
    ours = np.stack(runner(sentences, {}))
    reference = np.asarray(st_model.encode(sentences, batch_size=len(sentences),
                                           normalize_embeddings=True))
    assert reference.shape == ours.shape == (len(sentences), DIMENSION)
    cosines = _cosines(ours, reference)
    assert np.all(cosines >= 0.9999), cosines


def test_empty_batch(runner: Runner) -> None:
    assert runner([], {}) == []


def test_padding_does_not_change_results(runner: Runner, ours: np.ndarray) -> None:
    singles = np.stack([runner([sentence], {})[0] for sentence in SENTENCES])
    cosines = np.sum(singles * ours, axis=1)
    assert np.all(cosines > 0.9999), cosines
    np.testing.assert_allclose(singles, ours, atol=1e-4)


def test_embeddings_carry_meaning(runner: Runner) -> None:
    cat, kitten, database = runner(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Postgres stores rows."], {}
    )
    assert float(cat @ kitten) > float(cat @ database) + 0.2


def test_lengths_count_the_tokens_a_run_pads_and_the_run_after_them_matches(
        runner: Runner, ours: np.ndarray) -> None:
    """``lengths`` (the worker sorts a flush by it) counts each input's tokens with [CLS] and
    [SEP], truncated as the run truncates; a run of inputs it counted takes the kept ids and
    gives the same embeddings as one that tokenizes them itself."""
    tokenizer = load_tokenizer()
    counted = runner.lengths(SENTENCES)  # type: ignore[attr-defined]
    assert counted == [len(tokenizer.encode(text).ids) for text in SENTENCES]
    assert counted[0] == 3 and counted[-1] == 256  # "hi" with [CLS]/[SEP]; truncated at 256
    again = np.stack(runner(SENTENCES, {}))
    np.testing.assert_allclose(again, ours, atol=1e-6)
    assert not any(text in runner._ids for text in SENTENCES)  # type: ignore[attr-defined]
