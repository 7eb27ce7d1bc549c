"""The HTTP API against a live server running the real encoder, FAISS and vLLM on the CPU."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.support.http import assert_error, sse_frames
from tests.support.server import LiveServer

BREAK_QUESTION = "What happens when a break statement is executed inside a loop?"


# --- health -------------------------------------------------------------------------------------


def test_healthz(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "alive"}


def test_readyz_was_503_while_starting_and_is_200_now(client: httpx.Client, live_server: LiveServer) -> None:
    assert live_server.saw_not_ready, "readyz should answer 503 while models load and warm up"
    body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["cold_start_s"] > 0
    assert "warm-up passed every stage" in live_server.log_text()


# --- search -------------------------------------------------------------------------------------


def test_search(client: httpx.Client) -> None:
    r = client.post("/v1/search", json={"query": "How does the break statement end a loop?", "top_k": 5})
    assert r.status_code == 200
    body = r.json()
    hits = body["hits"]
    assert len(hits) == 5
    assert {"id", "doc_id", "title", "text", "score"} <= set(hits[0])
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert any(h["doc_id"] == "pyref:break" for h in hits[:3])
    assert set(body["timings_ms"]) >= {"embed", "retrieve", "total"}
    assert "embed;dur=" in r.headers["server-timing"]


def test_search_default_top_k_and_unicode(client: httpx.Client) -> None:
    r = client.post("/v1/search", json={"query": "Qu'est-ce que l'instruction « pass » ? 日本語 🐍"})
    assert r.status_code == 200
    assert len(r.json()["hits"]) == 4


# --- ask ----------------------------------------------------------------------------------------


def test_ask_answers_from_the_right_passage(client: httpx.Client) -> None:
    r = client.post("/v1/ask", json={"question": BREAK_QUESTION})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "terminat" in body["answer"].lower() or "exit" in body["answer"].lower(), body["answer"]
    assert body["sources"][0]["id"].startswith("pyref:break#")
    assert set(body["timings_ms"]) >= {"embed", "retrieve", "generate", "total"}
    usage = body["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > usage["context_tokens"] > 0
    assert body["context"]["tokens"] == usage["context_tokens"] <= body["context"]["budget"]
    assert body["request_id"].startswith("rag-")
    assert "generate;dur=" in r.headers["server-timing"]


def test_ask_streaming_framing_and_content(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/ask", json={"question": BREAK_QUESTION, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_frames(r.read())
    assert events[-1] == b"[DONE]"
    payloads = [orjson.loads(e) for e in events[:-1]]
    deltas = [p for p in payloads if p["type"] == "delta"]
    done = payloads[-1]
    assert len(deltas) >= 2 and done["type"] == "done"
    assert all(p["type"] == "delta" for p in payloads[:-1])
    assert "".join(d["text"] for d in deltas).strip() == done["answer"]
    assert "terminat" in done["answer"].lower() or "exit" in done["answer"].lower(), done["answer"]
    assert done["sources"][0]["id"].startswith("pyref:break#")
    assert set(done["timings_ms"]) >= {"embed", "retrieve", "first_token", "generate", "total"}
    assert done["usage"]["completion_tokens"] == len(deltas) or done["usage"]["completion_tokens"] >= 1


def test_ask_respects_max_tokens(client: httpx.Client) -> None:
    r = client.post("/v1/ask", json={"question": "Explain the with statement.", "max_tokens": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["usage"]["completion_tokens"] <= 3
    assert body["finish_reason"] in {"length", "stop"}


def test_client_disconnect_aborts_generation(client: httpx.Client, live_server: LiveServer) -> None:
    body = {"question": "What does the global statement do?", "stream": True, "max_tokens": 500, "stop": []}
    with client.stream("POST", "/v1/ask", json=body) as r:
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: ") and b'"delta"' in line.encode():
                break  # got a token: hang up mid-answer
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if f"aborted generation {request_id}" in live_server.log_text():
            return
        time.sleep(0.2)
    pytest.fail(f"generation {request_id} was not aborted after the client disconnected")


def test_client_disconnect_aborts_a_non_streamed_answer(
    client: httpx.Client, live_server: LiveServer
) -> None:
    aborted_before = live_server.log_text().count("aborted generation")
    # No stop strings and 500 tokens: the answer takes far longer than the client waits.
    body = {"question": "What does the global statement do?", "max_tokens": 500, "stop": []}
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/ask", json=body, timeout=httpx.Timeout(120, read=2.5))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if live_server.log_text().count("aborted generation") > aborted_before:
            return
        time.sleep(0.2)
    pytest.fail("the non-streamed generation was not aborted after the client went away")


# --- client mistakes: always a 4xx in the error shape -------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"question": ""},
        {"question": "   \n\t"},
        {"question": 123},
        {"question": ["a list"]},
        {"question": None},
        {"question": "ok", "top_k": 0},
        {"question": "ok", "top_k": -3},
        {"question": "ok", "top_k": "five"},
        {"question": "ok", "top_k": 10**9},
        {"question": "ok", "max_tokens": 0},
        {"question": "ok", "max_tokens": 100000},
        {"question": "ok", "temperature": -1},
        {"question": "ok", "temperature": "hot"},
        {"question": "ok", "stream": "yes"},
        {"question": "ok", "unknown_field": 1},
        {"question": "ok", "stop": "END"},
        {"question": "ok", "stop": [""]},
        {"question": "ok", "stop": ["a", "b", "c", "d", "e"]},
        {"question": "x" * 5000},
    ],
)
def test_ask_rejects_bad_input(client: httpx.Client, payload: dict) -> None:
    error = assert_error(client.post("/v1/ask", json=payload), 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "payload", [{}, {"query": ""}, {"query": 1}, {"query": "ok", "top_k": 0}, {"query": "ok", "top_k": 101}]
)
def test_search_rejects_bad_input(client: httpx.Client, payload: dict) -> None:
    assert_error(client.post("/v1/search", json=payload), 400)


def test_error_names_the_field(client: httpx.Client) -> None:
    error = assert_error(client.post("/v1/ask", json={"question": "ok", "top_k": 0}), 400)
    assert error["param"] == "top_k" and "top_k" in error["message"]


def test_invalid_json(client: httpx.Client) -> None:
    r = client.post("/v1/ask", content=b'{"question": ', headers={"content-type": "application/json"})
    assert_error(r, 400)


def test_body_not_an_object(client: httpx.Client) -> None:
    assert_error(client.post("/v1/ask", json=["question"]), 400)


def test_oversized_body_is_413(client: httpx.Client) -> None:
    # The test server is started with a 64 KiB body limit.
    r = client.post("/v1/ask", json={"question": "x" * 100_000})
    assert_error(r, 413, "payload_too_large")


def test_oversized_chunked_body_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    r = client.post("/v1/ask", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_unknown_route_and_wrong_method(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/ask"), 405)


def test_server_still_healthy_after_bad_input(client: httpx.Client) -> None:
    assert client.post("/v1/search", json={"query": "assert statement"}).status_code == 200
