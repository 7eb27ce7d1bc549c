"""The answer cache on its own: which requests get a key and which keys differ, the LRU within its
entries and bytes (the byte count checked against what Python really allocates), and the single
flight that makes identical requests in flight wait for one generation."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pytest

from rag_service.caching.answers import AnswerCache, CachedAnswer, answer_key, entry_bytes
from rag_service.caching.flights import Flights, follow
from rag_service.caching.reuse import AnswerReuse
from rag_service.domain import Sampling
from rag_service.errors import DeadlineExceeded
from rag_service.pipeline.budgets import Deadline, RequestTimer
from rag_service.runtime.metrics import Metrics

PROMPT = list(range(700, 1500))  # the size of a packed RAG prompt
BASE = {"max_tokens": 128, "temperature": 0.0, "stop": ["\n\n"], "sampling": None}


def _key(prompt: list[int] = PROMPT, model: str = "smollm2@bfloat16", **changes: object) -> bytes | None:
    return answer_key(model, prompt, **{**BASE, **changes})  # type: ignore[arg-type]


def _answer(text: str = "The pass statement does nothing.") -> CachedAnswer:
    return CachedAnswer(text, "stop", 9)


# --- keys ---------------------------------------------------------------------------------------


def test_only_deterministic_answers_get_a_key() -> None:
    assert _key() is not None  # greedy
    assert _key(temperature=0.7) is None  # sampled: asking again is meant to differ
    assert _key(temperature=0.7, sampling=Sampling(seed=7)) is not None  # sampled, but seeded


def test_the_same_request_has_the_same_key() -> None:
    assert _key() == _key(prompt=list(PROMPT), stop=["\n\n"])
    assert _key(temperature=0.7, sampling=Sampling(seed=7)) == _key(
        temperature=0.7, sampling=Sampling(seed=7)
    )


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": [*PROMPT[:-1], PROMPT[-1] + 1]},  # one token of one passage changed
        {"prompt": PROMPT[:-1]},
        {"prompt": [*PROMPT[:400], *PROMPT[401:], PROMPT[400]]},  # the same tokens in another order
        {"model": "another-model@bfloat16"},
        {"model": "smollm2@float32"},
        {"max_tokens": 64},
        {"stop": []},
        {"stop": ["\n"]},
        {"sampling": Sampling(top_p=0.9)},
        {"sampling": Sampling(seed=1)},
        {"sampling": Sampling(presence_penalty=0.5)},
        {"sampling": Sampling(frequency_penalty=0.5)},
        {"sampling": Sampling(min_tokens=16)},
    ],
)
def test_anything_that_can_change_the_text_changes_the_key(change: dict[str, Any]) -> None:
    assert _key(**change) != _key()


def test_prompt_ids_beyond_32_bits_do_not_collide() -> None:
    assert _key(prompt=[2**32 + 1]) != _key(prompt=[1])


# --- the LRU and its bounds ---------------------------------------------------------------------


def test_entries_bound_evicts_the_least_recently_used() -> None:
    cache = AnswerCache(max_entries=2, max_bytes=1 << 20, model="m")
    a, b, c = (bytes([i]) * 32 for i in range(3))
    assert cache.put(a, _answer("a")) == 0 and cache.put(b, _answer("b")) == 0
    assert cache.get(a) == _answer("a")  # a is now the most recently used
    assert cache.put(c, _answer("c")) == 1
    assert cache.get(b) is None and cache.get(a) == _answer("a") and cache.get(c) == _answer("c")
    assert len(cache) == 2


def test_replacing_a_key_counts_its_bytes_once() -> None:
    cache = AnswerCache(max_entries=8, max_bytes=1 << 20, model="m")
    key = b"k" * 32
    cache.put(key, _answer("short"))
    cache.put(key, _answer("a longer answer than the first"))
    assert len(cache) == 1 and cache.bytes == entry_bytes(key, _answer("a longer answer than the first"))


def test_an_answer_larger_than_the_whole_bound_is_not_kept() -> None:
    cache = AnswerCache(max_entries=8, max_bytes=4096, model="m")
    cache.put(b"small" * 6, _answer())
    assert cache.put(b"big" * 11, _answer("x" * 5000)) == 0
    assert cache.get(b"big" * 11) is None and len(cache) == 1  # and nothing was evicted for it


@pytest.mark.parametrize("longest", [1500, 40])  # typical answers; tiny ones (bookkeeping dominates)
def test_a_full_cache_stays_within_its_byte_bound_and_that_is_the_memory_it_holds(longest: int) -> None:
    max_bytes = 256 * 1024
    cache = AnswerCache(max_entries=100_000, max_bytes=max_bytes, model="m")
    tracemalloc.start()
    try:
        evicted = 0
        for i in range(3000):  # answers of 10 to `longest` characters, some non-ASCII
            text = ("é" if i % 7 == 0 else "a") * (10 + (i * 37) % longest)
            key = _key(prompt=[i, *PROMPT[:50]])
            assert key is not None
            evicted += cache.put(key, CachedAnswer(text + "🐍" * (i % 3), "stop", i))
            assert cache.bytes <= max_bytes
        assert evicted > 0 and evicted + len(cache) == 3000
        assert cache.bytes == sum(entry_bytes(k, a) for k, (a, _) in cache._entries.items())
        counted = cache.bytes
        del text, key
        gc.collect()
        with_cache = tracemalloc.get_traced_memory()[0]
        del cache  # what it held, and only that, is freed now
        gc.collect()
        held = with_cache - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # The count is an upper bound of what the kept answers really take (keys, texts, objects, links).
    assert 0.5 * counted < held <= counted, (held, counted)


# --- single flight ------------------------------------------------------------------------------


def test_followers_get_the_leaders_answer_and_a_leader_without_one_wakes_them_empty_handed() -> None:
    async def scenario() -> None:
        flights: Flights[str, str] = Flights()
        assert flights.lead_or_follow("q") is None  # leads
        first, second = flights.lead_or_follow("q"), flights.lead_or_follow("q")
        assert first is not None and first is second and len(flights) == 1
        waiting = asyncio.gather(follow(first), follow(second))
        await asyncio.sleep(0)
        flights.land("q", "the answer")
        assert await waiting == ["the answer", "the answer"] and len(flights) == 0

        assert flights.lead_or_follow("q") is None  # the next one leads again
        third = flights.lead_or_follow("q")
        assert third is not None
        flights.land("q", None)  # cut short: nothing to share
        assert await follow(third) is None

    asyncio.run(scenario())


def test_a_follower_that_gives_up_leaves_the_leaders_future_alone() -> None:
    async def scenario() -> None:
        flights: Flights[str, str] = Flights()
        flights.lead_or_follow("q")
        running = flights.lead_or_follow("q")
        assert running is not None
        impatient = asyncio.ensure_future(follow(running))
        await asyncio.sleep(0)
        impatient.cancel()
        await asyncio.gather(impatient, return_exceptions=True)
        assert not running.cancelled()
        flights.land("q", "the answer")
        assert running.result() == "the answer"

    asyncio.run(scenario())


def _count(metrics: Metrics, name: str, **labels: str) -> float:
    return float(metrics.registry.get_sample_value(name, labels) or 0)


def test_concurrent_identical_claims_generate_once() -> None:
    """What the pipeline does for three identical requests at once: one leads (generates), two wait for
    it; a fourth, later, finds the answer stored; all of it counted."""

    async def scenario() -> None:
        metrics = Metrics()
        reuse = AnswerReuse(AnswerCache(max_entries=8, max_bytes=1 << 20, model="m"), metrics)
        key = reuse.key(PROMPT, 128, 0.0, ["\n\n"], None)
        assert key is not None

        def timer() -> RequestTimer:
            return RequestTimer(Deadline(60_000), metrics)

        leader = await reuse.claim(key, timer(), 60_000)
        assert leader is None  # generates
        followers = asyncio.gather(reuse.claim(key, timer(), 60_000), reuse.claim(key, timer(), 60_000))
        await asyncio.sleep(0.01)
        reuse.keep(key, _answer())
        assert await followers == [_answer(), _answer()]
        assert await reuse.claim(key, timer(), 60_000) == _answer()
        assert _count(metrics, "rag_answer_cache_misses_total") == 1
        assert _count(metrics, "rag_answer_cache_hits_total", source="in_flight") == 2
        assert _count(metrics, "rag_answer_cache_hits_total", source="stored") == 1
        assert _count(metrics, "rag_answer_cache_entries") == 1
        assert _count(metrics, "rag_answer_cache_bytes") == entry_bytes(key, _answer())

    asyncio.run(scenario())


def test_a_follower_of_a_leader_without_an_answer_leads_next_and_a_late_wait_is_over_budget() -> None:
    async def scenario() -> None:
        metrics = Metrics()
        reuse = AnswerReuse(AnswerCache(max_entries=8, max_bytes=1 << 20, model="m"), metrics)
        key = b"k" * 32
        assert await reuse.claim(key, RequestTimer(Deadline(60_000), metrics), 60_000) is None
        follower = asyncio.ensure_future(reuse.claim(key, RequestTimer(Deadline(60_000), metrics), 60_000))
        await asyncio.sleep(0.01)
        reuse.keep(key, None)  # the leader's answer was cut short
        assert await follower is None  # so the follower generates, and leads
        with pytest.raises(DeadlineExceeded):  # a third waits for it, within 50 ms only
            await reuse.claim(key, RequestTimer(Deadline(60_000), metrics), 50)
        assert _count(metrics, "rag_answer_cache_misses_total") == 2
        assert len(reuse.cache) == 0

    asyncio.run(scenario())
