"""minilm through the queue equals the same model run in-process with sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from models.weights import minilm_dir
from producers import Client

pytestmark = pytest.mark.e2e

TEXTS = [
    "A short one.",
    "Queue-driven inference keeps GPUs busy while producers go on with their work.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    " ".join(["long input"] * 200),
]


def test_queue_embeddings_match_in_process_sentence_transformers(workers: object,
                                                                 client: Client) -> None:
    through_queue = np.stack(client.map("minilm", TEXTS, timeout=120))
    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(
        TEXTS, normalize_embeddings=True)
    cosine = np.sum(through_queue * reference, axis=1)
    assert through_queue.shape == (len(TEXTS), 384)
    assert np.all(cosine > 0.999), cosine
