from __future__ import annotations

import numpy as np

from rag_service.embedding.encoder import Encoder


def test_dimension_and_dtype(encoder: Encoder) -> None:
    vectors = encoder.encode_queries(["What does the pass statement do?"])
    assert encoder.dimension == 384
    assert vectors.shape == (1, 384)
    assert vectors.dtype == np.float32


def test_vectors_are_normalized(encoder: Encoder) -> None:
    texts = ["short", "A much longer passage about HNSW graphs and inner products. " * 20, "ünïcödé ✓ 日本語"]
    norms = np.linalg.norm(encoder.encode_passages(texts), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_identical_text_gives_identical_vector(encoder: Encoder) -> None:
    a = encoder.encode_queries(["identical text"])
    b = encoder.encode_queries(["identical text"])
    np.testing.assert_array_equal(a, b)


def test_related_text_is_closer_than_unrelated(encoder: Encoder) -> None:
    q, related, unrelated = encoder.encode_passages(
        [
            "How do I leave a loop early?",
            "The break statement terminates the nearest enclosing loop.",
            "Bananas are rich in potassium.",
        ]
    )
    assert float(q @ related) > float(q @ unrelated) + 0.1


def test_empty_input(encoder: Encoder) -> None:
    assert encoder.encode_passages([]).shape == (0, 384)
