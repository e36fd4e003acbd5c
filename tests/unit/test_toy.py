"""models.toy: the seeded toy classifier is deterministic and returns proper probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from models import build_registry, toy
from models.registry import LoadContext, Runner

TEXTS = ["a cat", "the queue is long", "Postgres keeps the state", "x", "🙂 unicode ünïcödé"]


@pytest.fixture(scope="module")
def runner() -> Runner:
    return build_registry().get("toy-classifier").load(LoadContext())


def test_outputs_are_float32_probability_vectors(runner: Runner) -> None:
    outputs = runner(TEXTS, {})
    assert len(outputs) == len(TEXTS)
    for row in outputs:
        assert isinstance(row, np.ndarray)
        assert row.dtype == np.float32
        assert row.shape == (toy.CLASSES,) == (4,)
        assert np.all(row > 0)
        assert np.all(row < 1)
        assert float(row.sum()) == pytest.approx(1.0, abs=1e-5)


def test_two_loads_give_identical_outputs(runner: Runner) -> None:
    again = toy.load(LoadContext())
    for first, second in zip(runner(TEXTS, {}), again(TEXTS, {}), strict=True):
        np.testing.assert_array_equal(first, second)


def test_batch_and_single_agree(runner: Runner) -> None:
    batch = runner(TEXTS, {})
    for text, row in zip(TEXTS, batch, strict=True):
        np.testing.assert_allclose(runner([text], {})[0], row, rtol=1e-5, atol=1e-6)


def test_different_texts_give_different_outputs(runner: Runner) -> None:
    outputs = runner(TEXTS, {})
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not np.allclose(outputs[i], outputs[j]), (TEXTS[i], TEXTS[j])


def test_featurize_is_a_fixed_normalised_function() -> None:
    features = toy.featurize("hello")
    assert len(features) == toy.FEATURES
    assert sum(features) == pytest.approx(1.0)
    assert features == toy.featurize("hello")
    assert features != toy.featurize("hellp")


def test_version_names_the_seed() -> None:
    assert str(toy.SEED) in toy.VERSION
    assert build_registry().version("toy-classifier") == toy.VERSION
