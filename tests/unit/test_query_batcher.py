"""Micro-batching of query embeddings with the real MiniLM encoder.

``DelayedEncoder`` is the real encoder with an added delay per forward pass (a fake only of time, as
our standards allow): it holds the single encoder thread busy for a known time, so a question whose
deadline passes while it waits is deterministically dropped.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from rag_service.embedding.query_batcher import QueryBatcher
from rag_service.errors import DeadlineExceeded

QUESTIONS = [
    "What does the pass statement do?",
    "How does a for loop work?",
    "What is a lambda expression?",
    "What does the assert statement do?",
    "How are exceptions raised?",
    "What does yield do in a function?",
]


class DelayedEncoder:
    """The real encoder, sleeping ``delay_s`` before each forward pass and recording every batch."""

    def __init__(self, real, delay_s: float) -> None:
        self._real = real
        self.delay_s = delay_s
        self.batches: list[list[str]] = []

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        time.sleep(self.delay_s)
        return self._real.encode_queries(texts)


def test_concurrent_questions_share_one_forward_pass(encoder) -> None:
    delayed = DelayedEncoder(encoder, delay_s=0.2)
    sizes: list[int] = []

    async def run() -> list[np.ndarray]:
        batcher = QueryBatcher(
            delayed.encode_queries, max_batch_size=32, max_wait_ms=2, on_batch=sizes.append
        )
        try:
            # The first question occupies the encoder for 0.2 s; the others queue up meanwhile.
            first = asyncio.create_task(batcher.embed(QUESTIONS[0]))
            await asyncio.sleep(0.05)
            rest = await asyncio.gather(*(batcher.embed(q) for q in QUESTIONS[1:]))
            return [await first, *rest]
        finally:
            await batcher.close()

    vectors = asyncio.run(run())
    assert [len(b) for b in delayed.batches] == [1, len(QUESTIONS) - 1]
    assert sizes == [1, len(QUESTIONS) - 1]
    alone = [encoder.encode_queries([q])[0] for q in QUESTIONS]
    # int8 activations are quantized per batch: a vector moves slightly with its batch mates.
    floor = 0.98 if encoder.quantization == "int8-dynamic" else 0.999
    for got, expected in zip(vectors, alone, strict=True):
        assert float(np.dot(got, expected)) > floor  # the vectors of encoding each on its own


def test_batch_size_is_capped(encoder) -> None:
    delayed = DelayedEncoder(encoder, delay_s=0.1)

    async def run() -> None:
        batcher = QueryBatcher(delayed.encode_queries, max_batch_size=2, max_wait_ms=2)
        try:
            await asyncio.gather(*(batcher.embed(q) for q in QUESTIONS))
        finally:
            await batcher.close()

    asyncio.run(run())
    assert all(len(b) <= 2 for b in delayed.batches)
    assert sorted(q for b in delayed.batches for q in b) == sorted(QUESTIONS)


def test_question_past_its_deadline_is_dropped_not_encoded(encoder) -> None:
    delayed = DelayedEncoder(encoder, delay_s=0.5)
    dropped: list[int] = []

    async def run() -> None:
        batcher = QueryBatcher(
            delayed.encode_queries, max_batch_size=32, max_wait_ms=0, on_drop=lambda: dropped.append(1)
        )
        try:
            busy = asyncio.create_task(batcher.embed("keeps the encoder busy for half a second"))
            await asyncio.sleep(0.05)
            # Due in 0.1 s, but the encoder is busy for ~0.45 s more: dropped from the queue.
            late = asyncio.create_task(batcher.embed("too late", deadline=time.monotonic() + 0.1))
            on_time = asyncio.create_task(batcher.embed("in time", deadline=time.monotonic() + 30))
            with pytest.raises(DeadlineExceeded) as info:
                await late
            assert info.value.stage == "embed" and info.value.code == "embed_timeout"
            assert (await on_time).shape == (encoder.dimension,)
            await busy
        finally:
            await batcher.close()

    asyncio.run(run())
    encoded = [q for b in delayed.batches for q in b]
    assert "too late" not in encoded, "an expired question must not be encoded"
    assert "in time" in encoded
    assert dropped == [1]
