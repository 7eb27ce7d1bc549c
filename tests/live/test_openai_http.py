"""The OpenAI-compatible API on the wire: SSE framing, error shapes, disconnects, the API key.

Most tests talk raw HTTP to the live server (real encoder, FAISS and vLLM). Two things cannot be
produced on demand by a healthy server, and are checked on a small second server without vLLM:
the API key (a second vLLM engine only for that would cost ~40 s of CPU) and an error in the middle
of a stream (see ``test_error_mid_stream_*``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from openai.types.chat import ChatCompletionMessageParam
from pydantic import SecretStr

from rag_service.api import build_app
from rag_service.api.errors import install_error_handlers
from rag_service.api.openai.serving_chat import chat_stream
from rag_service.api.serving import stream_answer
from rag_service.config import BudgetSettings
from rag_service.errors import GenerationFailed
from rag_service.pipeline.budgets import Deadline
from rag_service.pipeline.pipeline import Answer, AnswerRequest
from rag_service.prompting.plans import ConversationPlan
from rag_service.runtime.admission import AdmissionController
from rag_service.runtime.metrics import Metrics
from tests.support.http import assert_error, sse_frames
from tests.support.paths import repo_settings
from tests.support.server import LiveServer, serve_in_thread

CHAT_MODEL = "smollm2-135m-instruct"
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What happens when a break statement is executed inside a loop?"}
]


# --- SSE framing --------------------------------------------------------------------------------


def test_stream_framing(client: httpx.Client) -> None:
    body = {"model": CHAT_MODEL, "messages": ASK, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"].startswith("rag-")
        frames = sse_frames(r.read())
    assert frames[-1] == b"[DONE]"
    chunks = [orjson.loads(f) for f in frames[:-1]]
    first, *middle, final, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in middle) and middle
    assert final["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert {"sources", "timings_ms", "context", "degraded", "degraded_reason"} <= set(final)
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["model"] == CHAT_MODEL
        assert c["id"] == first["id"] and c["created"] == first["created"]


def test_bad_stream_request_is_a_json_error_not_a_stream(client: httpx.Client) -> None:
    body = {"model": CHAT_MODEL, "messages": ASK, "stream": True, "temperature": -1}
    assert_error(client.post("/v1/chat/completions", json=body), 400)


# --- error shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({}, "model"),
        ({"model": CHAT_MODEL}, "messages"),
        ({"model": CHAT_MODEL, "messages": []}, "messages"),
        ({"model": CHAT_MODEL, "messages": "hi"}, "messages"),
        ({"model": CHAT_MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"model": CHAT_MODEL, "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": CHAT_MODEL, "messages": [{"role": "user", "content": " "}]}, "messages"),
        ({"model": CHAT_MODEL, "messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        (
            {
                "model": CHAT_MODEL,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            },
            "messages[0].content",
        ),
        (
            {"model": CHAT_MODEL, "messages": [{"role": "tool", "content": "1", "tool_call_id": "a"}]},
            "messages[0].role",
        ),
        ({"model": CHAT_MODEL, "messages": ASK, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": CHAT_MODEL, "messages": ASK, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": CHAT_MODEL, "messages": ASK, "seed": 2**64}, "seed"),
        ({"model": CHAT_MODEL, "messages": ASK, "max_tokens": 5, "max_completion_tokens": 6}, "max_tokens"),
        ({"model": CHAT_MODEL, "messages": ASK, "logit_bias": {"50256": -100}}, "logit_bias"),
        ({"model": CHAT_MODEL, "messages": ASK, "store": True}, "store"),
        ({"model": CHAT_MODEL, "messages": ASK, "stream": "yes"}, "stream"),
        ({"model": "sentence-transformers/all-MiniLM-L6-v2", "input": ["ok", 3]}, None),
    ],
)
def test_bad_requests_get_the_openai_error_envelope(
    client: httpx.Client, payload: dict, param: str | None
) -> None:
    path = "/v1/embeddings" if "input" in payload else "/v1/chat/completions"
    error = assert_error(client.post(path, json=payload), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_accepted_bookkeeping_fields_and_text_parts(client: httpx.Client) -> None:
    body = {
        "model": CHAT_MODEL,
        "messages": [
            {"role": "developer", "content": "Answer in one sentence."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "What does the pass statement do?"}],
                "name": "ann",
            },
        ],
        "user": "user-1",
        "metadata": {"session": "s1"},
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "tool_choice": "none",
        "n": 1,
        "logprobs": False,
        "response_format": {"type": "text"},
        "max_tokens": 12,
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["sources"][0]["doc_id"] == "pyref:pass"


def test_unknown_model_and_invalid_json(client: httpx.Client) -> None:
    error = assert_error(client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": ASK}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    r = client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert_error(r, 400)
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")


# --- client disconnect aborts the generation ----------------------------------------------------


def _wait_for_abort(live_server: LiveServer, text: str, before: int = 0) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if live_server.log_text().count(text) > before:
            return
        time.sleep(0.2)
    pytest.fail(f"{text!r} did not appear in the server log: the generation was not aborted")


def test_disconnect_mid_stream_aborts_generation(client: httpx.Client, live_server: LiveServer) -> None:
    body = {"model": CHAT_MODEL, "messages": ASK, "stream": True, "max_tokens": 500, "stop": []}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if '"content":"' in line and '"role"' not in line:
                break  # got a token: hang up mid-answer
    _wait_for_abort(live_server, f"aborted generation {request_id}")


def test_disconnect_aborts_a_non_streamed_completion(client: httpx.Client, live_server: LiveServer) -> None:
    before = live_server.log_text().count("aborted generation")
    body = {"model": CHAT_MODEL, "messages": ASK, "max_tokens": 500, "stop": []}
    # A short answer can end (EOS) before the client gives up on a fast machine: a token delay (which
    # also asks vLLM for all 500 tokens) keeps the answer going for 25 s, far past the 2.5 s timeout.
    slow = {"X-Rag-Fault-Delay": "token=50"}
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=body, headers=slow, timeout=httpx.Timeout(120, read=2.5))
    _wait_for_abort(live_server, "aborted generation", before)


# --- a small second server without vLLM ---------------------------------------------------------


def test_api_key_is_required_when_configured() -> None:
    settings = repo_settings().model_copy(update={"api_key": SecretStr("s3cret")})
    # The app's lifespan is off: the service never loads, so chat answers 503 (not ready) once past the key.
    with serve_in_thread(build_app(settings)) as url:
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0, timeout=30)
        assert [m.id for m in good.models.list().data] == [
            CHAT_MODEL,
            "sentence-transformers/all-MiniLM-L6-v2",
        ]
        with pytest.raises(openai.InternalServerError) as not_ready:
            good.chat.completions.create(model=CHAT_MODEL, messages=ASK)
        assert not_ready.value.status_code == 503 and not_ready.value.code == "not_ready"
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.models.list()
        good.close()
        bad.close()
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        for method, path in [
            ("GET", "/v1/models"),
            ("GET", f"/v1/models/{CHAT_MODEL}"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/embeddings"),
        ]:
            r = httpx.request(method, url + path, json={})
            error = assert_error(r, 401)
            assert error["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
        # Our own read-only API stays open.
        assert httpx.get(f"{url}/healthz").status_code == 200


async def _failing_pipeline_stream(req: AnswerRequest) -> AsyncIterator[str | Answer]:
    """Two real-looking deltas, then the error the real generator raises when the vLLM engine fails
    mid-answer (a healthy engine cannot be made to fail on demand)."""
    yield "The loop"
    yield " ends"
    raise GenerationFailed("generation failed: EngineDeadError: engine core died")


class _FailingPipeline:
    ask_stream = staticmethod(_failing_pipeline_stream)


def _failing_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    plan = ConversationPlan("q", lambda hits: [], 0, 0, 0)
    req = AnswerRequest(plan, 4, 16, 0.0, [], deadline=Deadline(15_000), budgets=BudgetSettings())
    head = {"id": "chatcmpl-x", "created": 1, "model": CHAT_MODEL, "system_fingerprint": None}

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        pipeline: Any = _FailingPipeline()
        ticket = await AdmissionController(1, 0).admit(req.deadline.at)
        frames = stream_answer(Metrics(), "chat", pipeline, req, ticket, chat_stream(head, plan, True))
        return StreamingResponse(frames, media_type="text/event-stream")

    return app


def test_error_mid_stream_is_an_error_event_then_done() -> None:
    with serve_in_thread(_failing_app()) as url:
        raw = httpx.post(f"{url}/v1/chat/completions", json={}).content
    frames = sse_frames(raw)
    assert frames[-1] == b"[DONE]"
    events = [orjson.loads(f) for f in frames[:-1]]
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == ["The loop", " ends"]
    assert events[-1] == {
        "error": {
            "message": "generation failed: EngineDeadError: engine core died",
            "type": "generation_error",
            "code": "generation_failed",
            "param": None,
        }
    }


def test_error_mid_stream_raises_in_the_official_client() -> None:
    with serve_in_thread(_failing_app()) as url:
        received = []
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
            stream = client.chat.completions.create(model=CHAT_MODEL, messages=ASK, stream=True)
            with pytest.raises(openai.APIError) as err:
                for chunk in stream:
                    received.append(chunk.choices[0].delta.content if chunk.choices else None)
    assert received == ["", "The loop", " ends"]
    assert "engine core died" in err.value.message
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "generation_failed"
