"""The answer cache against the live server (real encoder, FAISS, SQLite and vLLM): a repeated question
is answered from the cache on every answering route, streamed or not; a write that changes the
question's passages makes it miss; other sampling misses; identical questions at once are generated
once; and a cache full of answers stays within its byte bound (the test server's is small)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_service.config import Settings
from tests.support.http import sse_payloads
from tests.support.server import QUICK_CHECK, TEST_CACHE_MAX_BYTES, server_of_its_own

CHAT_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(
    settings: Settings, default_index_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """A server of its own with the cache on (the shared one runs without it) and a small byte bound,
    on its own index copy (these tests write documents)."""
    env = {
        "RAG_CACHE__ENABLED": "true",
        "RAG_CACHE__MAX_BYTES": str(TEST_CACHE_MAX_BYTES),
        **QUICK_CHECK,
    }
    folder = tmp_path_factory.mktemp("cached")
    with (
        server_of_its_own(settings, default_index_dir, folder, env) as server,
        httpx.Client(base_url=server.url, timeout=120) as c,
    ):
        yield c


SHORT = 24  # tokens per answer: enough to be a real answer, quick to generate on the CPU


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(
        rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", text, re.M
    )
    return float(match.group(1)) if match else 0.0


def _cache_metrics(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {
        "stored": _metric(text, "rag_answer_cache_hits_total", 'source="stored"'),
        "in_flight": _metric(text, "rag_answer_cache_hits_total", 'source="in_flight"'),
        "misses": _metric(text, "rag_answer_cache_misses_total"),
        "evictions": _metric(text, "rag_answer_cache_evictions_total"),
        "entries": _metric(text, "rag_answer_cache_entries"),
        "bytes": _metric(text, "rag_answer_cache_bytes"),
    }


def _ask(client: httpx.Client, question: str, **extra: Any) -> dict[str, Any]:
    r = client.post("/v1/ask", json={"question": question, "max_tokens": SHORT, **extra})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_a_repeated_question_is_answered_from_the_cache(client: httpx.Client) -> None:
    question = "What does the nonlocal statement do?"
    before = _cache_metrics(client)
    first = _ask(client, question)
    assert first["cached"] is False and "generate" in first["timings_ms"]
    second = _ask(client, question)
    assert second["cached"] is True
    assert second["answer"] == first["answer"] and second["finish_reason"] == first["finish_reason"]
    assert second["usage"] == first["usage"]  # the same prompt, and the tokens the answer cost
    assert [s["id"] for s in second["sources"]] == [s["id"] for s in first["sources"]]  # retrieved again
    timings = second["timings_ms"]
    assert "cache" in timings and "generate" not in timings and {"embed", "retrieve", "total"} <= set(timings)
    assert second["request_id"] != first["request_id"]
    after = _cache_metrics(client)
    assert after["misses"] == before["misses"] + 1 and after["stored"] == before["stored"] + 1

    # Streamed: the same answer as SSE events of the usual shapes, the done event saying it was cached.
    with client.stream(
        "POST", "/v1/ask", json={"question": question, "max_tokens": SHORT, "stream": True}
    ) as r:
        assert r.status_code == 200
        events = sse_payloads(r.read())
    deltas = [e for e in events if e["type"] == "delta"]
    assert "".join(d["text"] for d in deltas).strip() == first["answer"]
    done = events[-1]
    assert done["type"] == "done" and done["cached"] is True and done["answer"] == first["answer"]


def test_the_openai_routes_use_the_cache_streamed_and_not(client: httpx.Client) -> None:
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "What is a generator expression?"}],
        "max_tokens": SHORT,
    }
    first = client.post("/v1/chat/completions", json=body).json()
    second = client.post("/v1/chat/completions", json=body).json()
    assert first["cached"] is False and second["cached"] is True
    assert second["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    assert second["usage"] == first["usage"] and "cache" in second["timings_ms"]

    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        chunks = sse_payloads(r.read())
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.strip() == first["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == first["choices"][0]["finish_reason"]
    assert chunks[-1]["cached"] is True

    completion = {"model": CHAT_MODEL, "prompt": "The for statement is used", "max_tokens": 8}
    texts = [client.post("/v1/completions", json=completion).json() for _ in range(2)]
    assert [t["cached"] for t in texts] == [False, True]
    assert texts[1]["choices"][0]["text"] == texts[0]["choices"][0]["text"]


LIGHTHOUSE = {
    "id": "test:cache-lighthouse",
    "title": "The Skerrivore lighthouse",
    "text": "The Skerrivore lighthouse keeper lights the lamp at dusk and winds the clockwork every "
    "four hours.",
}
QUESTION = "How often does the Skerrivore lighthouse keeper wind the clockwork?"


def test_a_write_that_changes_the_passages_misses(client: httpx.Client) -> None:
    assert client.post("/v1/documents", json={"documents": [LIGHTHOUSE]}).status_code == 200
    try:
        first = _ask(client, QUESTION)
        assert first["sources"][0]["doc_id"] == LIGHTHOUSE["id"] and first["cached"] is False
        assert _ask(client, QUESTION)["cached"] is True

        # The document is replaced: the prompt holds the new text, so the old answer is not reused.
        changed = {**LIGHTHOUSE, "text": LIGHTHOUSE["text"].replace("every four hours", "twice a night")}
        assert client.post("/v1/documents", json={"documents": [changed]}).status_code == 200
        after_upsert = _ask(client, QUESTION)
        assert after_upsert["cached"] is False
        assert after_upsert["sources"][0]["text"] == changed["text"]
        assert _ask(client, QUESTION)["cached"] is True  # and that answer is kept in turn
    finally:
        # Deleted: its passage leaves the prompt, which misses again.
        assert client.delete(f"/v1/documents/{LIGHTHOUSE['id']}").status_code == 200
    after_delete = _ask(client, QUESTION)
    assert after_delete["cached"] is False
    assert all(s["doc_id"] != LIGHTHOUSE["id"] for s in after_delete["sources"])


def test_other_sampling_misses_and_sampled_answers_are_never_kept(client: httpx.Client) -> None:
    question = "What does the del statement do?"
    assert _ask(client, question)["cached"] is False
    assert _ask(client, question)["cached"] is True
    assert _ask(client, question, max_tokens=SHORT - 1)["cached"] is False  # another length
    assert _ask(client, question, stop=[])["cached"] is False  # other stop strings
    before = _cache_metrics(client)
    # Sampled without a seed: asking again is meant to give another answer, so none is kept.
    assert [_ask(client, question, temperature=0.8)["cached"] for _ in range(2)] == [False, False]
    after = _cache_metrics(client)
    assert after["misses"] == before["misses"] and after["stored"] == before["stored"]  # not even looked up

    # A fixed seed makes a sampled answer deterministic (OpenAI's `seed`): the second one is reused.
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": SHORT,
        "temperature": 0.8,
        "seed": 11,
    }
    seeded = [client.post("/v1/chat/completions", json=body).json() for _ in range(2)]
    assert [s["cached"] for s in seeded] == [False, True]
    other_seed = client.post("/v1/chat/completions", json={**body, "seed": 12}).json()
    assert other_seed["cached"] is False


def test_identical_questions_at_once_are_generated_once(client: httpx.Client) -> None:
    question = "What does the yield statement do inside a function?"
    before = _cache_metrics(client)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: _ask(client, question, max_tokens=48), range(3)))
    assert sorted(a["cached"] for a in answers) == [False, True, True]
    assert len({a["answer"] for a in answers}) == 1
    after = _cache_metrics(client)
    assert after["misses"] == before["misses"] + 1  # one generation
    hits = (after["in_flight"] - before["in_flight"]) + (after["stored"] - before["stored"])
    assert hits == 2


def test_a_full_cache_stays_within_its_byte_bound(client: httpx.Client) -> None:
    before = _cache_metrics(client)
    # Raw completions (no retrieval, a few tokens): many distinct answers quickly, more than fit.
    for n in range(80):
        body = {"model": CHAT_MODEL, "prompt": f"Item {n} of the list is", "max_tokens": 2}
        assert client.post("/v1/completions", json=body).status_code == 200
        if n % 20 == 19:
            assert _cache_metrics(client)["bytes"] <= TEST_CACHE_MAX_BYTES
    after = _cache_metrics(client)
    assert after["evictions"] > before["evictions"]
    assert 0 < after["bytes"] <= TEST_CACHE_MAX_BYTES
    assert after["misses"] == before["misses"] + 80
