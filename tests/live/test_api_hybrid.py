"""Retrieval modes through the live server (real encoder, FTS5, FAISS, vLLM): mode selection per
request and by default, which retriever found each source, per-retriever timings and metrics, hostile
lexical input, the documents API keeping both retrievers in step, and the dense fallback when the
lexical side is late (made deterministic with the test-only ``lexical`` fault delay)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

FAULT = "X-Rag-Fault-Delay"
QUESTION = "What does the pass statement do?"


def _search(client: httpx.Client, query: str, **extra: Any) -> dict[str, Any]:
    headers = extra.pop("headers", None)
    r = client.post("/v1/search", json={"query": query, "top_k": 10, **extra}, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _metric(text: str, name: str, labels: str) -> float:
    match = re.search(re.escape(name + "{" + labels + "}") + r" ([0-9.e+-]+)\n", text)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_each_mode_finds_the_answer_and_says_how(client: httpx.Client, mode: str) -> None:
    body = _search(client, QUESTION, mode=mode)
    hits = body["hits"]
    assert body["retrieval"] == {"mode": mode, "fallback": None, "reason": None}
    assert hits[0]["doc_id"] == "pyref:pass"
    timings = body["timings_ms"]
    if mode == "dense":
        assert all(set(h["retrievers"]) == {"dense"} for h in hits)
        assert [h["retrievers"]["dense"] for h in hits] == list(range(1, 11))
        assert {"embed", "retrieve_dense"} <= set(timings) and "retrieve_lexical" not in timings
    elif mode == "lexical":
        assert all(set(h["retrievers"]) == {"lexical"} for h in hits)
        assert [h["retrievers"]["lexical"] for h in hits] == list(range(1, 11))
        # A lexical search needs no query vector: no embed stage.
        assert "embed" not in timings and "retrieve_lexical" in timings and "retrieve_dense" not in timings
    else:
        assert hits[0]["retrievers"] == {"dense": 1, "lexical": 1}
        assert all(h["retrievers"] and set(h["retrievers"]) <= {"dense", "lexical"} for h in hits)
        assert any(len(h["retrievers"]) == 2 for h in hits[1:]), "the lists should overlap beyond rank 1"
        assert {"embed", "retrieve_dense", "retrieve_lexical"} <= set(timings)
        # Both ran inside the retrieve stage (concurrently: neither adds to the other).
        assert max(timings["retrieve_dense"], timings["retrieve_lexical"]) <= timings["retrieve"]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_the_default_mode_is_hybrid(client: httpx.Client) -> None:
    assert _search(client, QUESTION)["retrieval"]["mode"] == "hybrid"


def test_an_unknown_mode_is_a_400_in_the_error_shape(client: httpx.Client) -> None:
    for path, payload in [
        ("/v1/search", {"query": QUESTION, "mode": "bm25"}),
        ("/v1/ask", {"question": QUESTION, "mode": 3}),
    ]:
        r = client.post(path, json=payload)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"]


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced quote',
        "NEAR(pass statement) AND OR NOT",
        "title:pass* ^statement {null}",
        "pass; DROP TABLE chunk_fts; --",
        "\u202e\x01 🐍 pass ünïcödé 東京",
        "the of and",  # no searchable word: a valid query with no lexical hits
        "pass " * 700,  # long (within max_question_chars)
    ],
)
@pytest.mark.parametrize("mode", ["lexical", "hybrid"])
def test_hostile_queries_are_valid(client: httpx.Client, query: str, mode: str) -> None:
    body = _search(client, query, mode=mode)
    assert body["retrieval"]["fallback"] is None
    if "pass" in query and mode == "lexical":  # the word is found, whatever syntax surrounds it
        assert "pyref:pass" in [h["doc_id"] for h in body["hits"]]
    if query == "the of and":
        assert all("lexical" not in h["retrievers"] for h in body["hits"])


def test_too_long_a_query_is_a_400(client: httpx.Client) -> None:
    r = client.post("/v1/search", json={"query": "pass " * 2000, "mode": "lexical"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "query"


def test_documents_api_keeps_both_retrievers_in_step(client: httpx.Client) -> None:
    doc = {"id": "test:hybrid-owl", "title": "Owls", "text": "A barn owl hunts voles at night by sound."}
    assert client.post("/v1/documents", json={"documents": [doc]}).status_code == 200
    for mode in ("dense", "lexical", "hybrid"):
        assert _search(client, "barn owl hunting voles", mode=mode)["hits"][0]["doc_id"] == doc["id"]
    replaced = {**doc, "text": "Snowy owls nest on the Arctic tundra."}
    assert client.post("/v1/documents", json={"documents": [replaced]}).status_code == 200
    lexical = _search(client, "voles", mode="lexical")["hits"]
    assert doc["id"] not in [h["doc_id"] for h in lexical], "the replaced text is still in the text index"
    assert _search(client, "arctic tundra", mode="lexical")["hits"][0]["doc_id"] == doc["id"]
    assert client.delete(f"/v1/documents/{doc['id']}").status_code == 200
    for mode in ("dense", "lexical", "hybrid"):
        found = [h["doc_id"] for h in _search(client, "snowy owls arctic tundra", mode=mode)["hits"]]
        assert doc["id"] not in found, f"{mode} still returns a deleted document"


def test_a_late_lexical_side_falls_back_to_dense(client: httpx.Client) -> None:
    budget = client.get("/readyz").json()["budgets_ms"]["retrieve"]
    before = client.get("/metrics").text
    late = {FAULT: f"lexical={budget * 1.5:g}"}
    body = _search(client, QUESTION, mode="hybrid", headers=late)
    assert body["retrieval"] == {"mode": "hybrid", "fallback": "dense", "reason": "lexical_late"}
    assert body["hits"][0]["doc_id"] == "pyref:pass"
    assert all(set(h["retrievers"]) == {"dense"} for h in body["hits"])
    assert body["timings_ms"]["retrieve"] < budget  # answered within the budget, not after the delay
    after = client.get("/metrics").text
    name = "rag_retrieval_fallbacks_total"
    assert _metric(after, name, 'reason="lexical_late"') == _metric(before, name, 'reason="lexical_late"') + 1
    assert 'rag_stage_seconds_count{stage="retrieve_lexical"}' in after

    # Asked for lexical only, there is nothing to fall back on: the retrieve stage times out.
    r = client.post("/v1/search", json={"query": QUESTION, "mode": "lexical"}, headers=late)
    assert r.status_code == 504 and r.json()["error"]["code"] == "retrieve_timeout"

    # The same fallback in an answer.
    r = client.post(
        "/v1/ask", json={"question": QUESTION, "max_tokens": 4, "top_k": 2, "mode": "hybrid"}, headers=late
    )
    assert r.status_code == 200, r.text
    assert r.json()["retrieval"]["fallback"] == "dense"


def test_ask_and_chat_take_the_mode(client: httpx.Client) -> None:
    r = client.post("/v1/ask", json={"question": QUESTION, "max_tokens": 4, "top_k": 2, "mode": "lexical"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["retrieval"]["mode"] == "lexical"
    assert [s["retrievers"] for s in body["sources"]] == [{"lexical": 1}, {"lexical": 2}]
    assert "embed" not in body["timings_ms"]

    chat = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 4,
        "rag": {"top_k": 2, "mode": "dense"},
    }
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["retrieval"]["mode"] == "dense"
    assert body["sources"][0]["retrievers"] == {"dense": 1}
    chat["rag"] = {"mode": "sparse"}
    assert client.post("/v1/chat/completions", json=chat).status_code == 400
