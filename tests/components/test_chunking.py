from __future__ import annotations

import pytest

from rag_service.embedding.encoder import Encoder
from rag_service.ingestion.chunking import Chunker
from rag_service.ingestion.corpus import python_reference_topics


@pytest.fixture(scope="module")
def chunker(encoder: Encoder) -> Chunker:
    return Chunker(encoder.tokenizer, chunk_tokens=64, overlap_tokens=16)


def _tokens(encoder: Encoder, text: str) -> int:
    return len(encoder.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def test_short_text_is_one_chunk(chunker: Chunker) -> None:
    assert chunker.split("  The pass statement does nothing.  ") == ["The pass statement does nothing."]


def test_empty_text_has_no_chunks(chunker: Chunker) -> None:
    assert chunker.split("") == []
    assert chunker.split(" \n\t ") == []


def test_long_text_windows_fit_overlap_and_cover(chunker: Chunker, encoder: Encoder) -> None:
    text = next(d.text for d in python_reference_topics() if d.id == "pyref:compound")
    chunks = chunker.split(text)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk in text, "a chunk must be an exact slice of the source text"
        assert _tokens(encoder, chunk) <= 64 + 2  # re-tokenizing a slice can differ by a token at the edges
    # consecutive chunks overlap, and together they cover the text from start to end
    positions = [text.index(c) for c in chunks]
    assert positions == sorted(positions)
    for (start, chunk), next_start in zip(zip(positions, chunks, strict=True), positions[1:], strict=False):
        assert next_start < start + len(chunk), "consecutive chunks should overlap"
    assert text.strip().startswith(chunks[0][:20])
    assert text.rstrip().endswith(chunks[-1][-20:])


def test_unicode_text(chunker: Chunker) -> None:
    text = "Ünïcödé façade naïve — 日本語のテキスト。 " * 40
    chunks = chunker.split(text)
    assert len(chunks) > 1
    assert all(c in text for c in chunks)


def test_overlap_must_be_smaller_than_chunk(encoder: Encoder) -> None:
    with pytest.raises(ValueError):
        Chunker(encoder.tokenizer, chunk_tokens=32, overlap_tokens=32)
