"""``remote.coalesced``: how the generator deployment streams through a Serve handle. Pieces that come
faster than the interval travel together, nothing is lost or reordered, slow pieces are not held, and
closing the stream closes the engine's (so the vLLM request is aborted). Delays control time only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from rag_service.domain import GenerationChunk
from rag_service.scaling.remote import coalesced

WORDS = ["The", " global", " statement", " declares", " names", " module", " level", "."]


async def _engine(gap_s: float, closed: list[bool] | None = None) -> AsyncGenerator[GenerationChunk, None]:
    try:
        for i, word in enumerate(WORDS):
            await asyncio.sleep(gap_s)
            last = i == len(WORDS) - 1
            yield GenerationChunk(word, "stop" if last else None, prompt_tokens=40, completion_tokens=i + 1)
    finally:
        if closed is not None:
            closed.append(True)


async def _collect(gap_s: float, interval_s: float) -> list[GenerationChunk]:
    return [chunk async for chunk in coalesced(_engine(gap_s), interval_s)]


def test_fast_pieces_travel_together_and_nothing_is_lost() -> None:
    sent = asyncio.run(_collect(gap_s=0.0, interval_s=10.0))
    assert sent[0].text == "The", "the first piece goes at once"
    assert len(sent) == 2, [c.text for c in sent]
    assert "".join(c.text for c in sent) == "".join(WORDS)
    assert sent[-1].finish_reason == "stop" and sent[-1].completion_tokens == len(WORDS)
    assert sent[-1].prompt_tokens == 40


def test_slow_pieces_are_sent_one_by_one() -> None:
    sent = asyncio.run(_collect(gap_s=0.02, interval_s=0.005))
    assert [c.text for c in sent] == WORDS
    assert [c.completion_tokens for c in sent] == list(range(1, len(WORDS) + 1))


def test_closing_the_stream_closes_the_engines() -> None:
    closed: list[bool] = []

    async def leave_after_first() -> None:
        stream = coalesced(_engine(0.0, closed), 0.05)
        first = await anext(stream)
        assert first.text == "The"
        await stream.aclose()

    asyncio.run(leave_after_first())
    assert closed == [True]
