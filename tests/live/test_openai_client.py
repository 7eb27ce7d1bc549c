"""The official ``openai`` client (sync and async) against the live server: real encoder, FAISS and
vLLM on the CPU. Only the base URL changes; RAG extras are read from the fields strict clients ignore."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.support.server import LiveServer

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BREAK_QUESTION = "What happens when a break statement is executed inside a loop?"
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": BREAK_QUESTION}]


def _grounded(text: str) -> bool:
    return "terminat" in text.lower() or "exit" in text.lower()


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[OpenAI]:
    # No key is configured on the test server: any api_key is accepted. No retries: errors show at once.
    with OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def _async_client(live_server: LiveServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


# --- models -------------------------------------------------------------------------------------


def test_models_list_the_generator_and_the_encoder(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [CHAT_MODEL, EMBEDDING_MODEL]
    assert all(m.object == "model" and m.owned_by == "rag-service" and m.created > 0 for m in models.data)
    assert client.models.retrieve(EMBEDDING_MODEL).id == EMBEDDING_MODEL  # an id with a slash
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.code == "model_not_found"


# --- chat completions ---------------------------------------------------------------------------


def test_chat_completion(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=CHAT_MODEL, messages=ASK)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == CHAT_MODEL and completion.created > 0
    choice = completion.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert _grounded(choice.message.content or ""), choice.message.content
    usage = completion.usage
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # RAG extras: additional fields the client keeps but does not model.
    extra = completion.model_extra or {}
    assert extra["sources"][0]["id"].startswith("pyref:break#")
    assert set(extra["sources"][0]) >= {"id", "title", "score", "text"}
    assert set(extra["timings_ms"]) >= {"embed", "retrieve", "first_token", "generate", "total"}
    assert extra["context"]["tokens"] <= extra["context"]["budget"]
    assert extra["degraded"] is False and extra["degraded_reason"] is None


def test_chat_stream_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == CHAT_MODEL for c in chunks)
    *with_choices, last = chunks
    final = with_choices[-1]
    assert final.choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert _grounded(text), text
    # include_usage: a last chunk with no choices and the usage; null usage on every other chunk.
    assert last.choices == [] and last.usage is not None
    # Each content chunk carries at least one new token (a token may add no text yet).
    assert last.usage.completion_tokens >= len([c for c in with_choices if c.choices[0].delta.content])
    assert all(c.usage is None for c in with_choices)
    extra = final.model_extra or {}
    assert extra["sources"][0]["id"].startswith("pyref:break#")
    assert "first_token" in extra["timings_ms"]


def test_chat_stream_without_usage_ends_with_finish_reason(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=ASK,
            stream=True,
            max_tokens=5,
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)
    assert "sources" in (chunks[-1].model_extra or {})


def test_async_client_streams_and_answers_concurrently(live_server: LiveServer) -> None:
    async def main() -> tuple[str, str]:
        async with _async_client(live_server) as client:

            async def streamed() -> str:
                stream = await client.chat.completions.create(
                    model=CHAT_MODEL,
                    messages=ASK,
                    stream=True,
                )
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

            async def whole() -> str:
                completion = await client.chat.completions.create(model=CHAT_MODEL, messages=ASK)
                return completion.choices[0].message.content or ""

            return await asyncio.gather(streamed(), whole())

    streamed, whole = asyncio.run(main())
    assert _grounded(streamed) and _grounded(whole), (streamed, whole)


def test_plain_chat_without_retrieval(client: OpenAI) -> None:
    # What is checked is the route: no retrieval, no sources, no embed stage, a real answer. Not the
    # 135M model's general knowledge: greedy bf16 on an AMX Xeon answered "What is the capital of
    # France?" with "La femme d'Alban, la France, ..." (answer quality is measured, not asserted here).
    completion = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        extra_body={"rag": {"retrieval": False}},
    )
    assert (completion.choices[0].message.content or "").strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
    extra = completion.model_extra or {}
    assert (
        extra["sources"] == []
        and "embed" not in extra["timings_ms"]
        and "retrieve" not in extra["timings_ms"]
    )


def test_follow_up_question_retrieves_from_the_earlier_turn(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Tell me about the assert statement."},
            {"role": "assistant", "content": "It tests a condition and raises AssertionError if false."},
            {"role": "user", "content": "When is it removed?"},
        ],
        max_tokens=32,
    )
    extra = completion.model_extra or {}
    assert extra["sources"][0]["doc_id"] == "pyref:assert"
    assert extra["context"]["messages_dropped"] == 0


def test_long_conversation_drops_old_turns_to_fit(client: OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = []
    for i in range(40):
        messages += [
            {"role": "user", "content": f"Question {i}: " + "tell me more " * 15},
            {"role": "assistant", "content": "Here is more. " * 15},
        ]
    messages.append({"role": "user", "content": "What does the pass statement do?"})
    # One passage keeps the prompt (and its prefill on the CPU) small; history fills what is left.
    completion = client.chat.completions.create(
        model=CHAT_MODEL, messages=messages, max_tokens=16, extra_body={"rag": {"top_k": 1}}
    )
    extra = completion.model_extra or {}
    assert extra["context"]["messages_dropped"] > 0
    assert completion.usage is not None and completion.usage.prompt_tokens + 16 <= 2048
    assert extra["sources"][0]["doc_id"] == "pyref:pass"


# --- sampling parameters: honoured, not ignored -------------------------------------------------


def _say(client: OpenAI, **params: Any) -> str:
    completion = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Write a short poem about the sea."}],
        extra_body={"rag": {"retrieval": False}},
        max_tokens=12,
        stop=[],
        **params,
    )
    return completion.choices[0].message.content or ""


def test_seed_makes_sampling_repeatable_and_top_p_narrows_it(client: OpenAI) -> None:
    greedy = _say(client, temperature=0)
    seven = _say(client, temperature=1.5, seed=7)
    assert _say(client, temperature=1.5, seed=7) == seven
    sampled = {seven, *(_say(client, temperature=1.5, seed=seed) for seed in (1, 2))}
    assert len(sampled) > 1 and greedy not in sampled
    # A tiny top_p leaves only the most likely token at every step: greedy, whatever the temperature.
    assert _say(client, temperature=1.5, top_p=1e-6, seed=1) == greedy


def test_max_tokens_stop_and_penalties_are_honoured(client: OpenAI) -> None:
    short = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        max_completion_tokens=3,
    )
    assert short.usage is not None and short.usage.completion_tokens == 3
    assert short.choices[0].finish_reason == "length"
    stopped = client.chat.completions.create(model=CHAT_MODEL, messages=ASK, stop=".")
    assert (
        "." not in (stopped.choices[0].message.content or "") and stopped.choices[0].finish_reason == "stop"
    )
    assert _say(client, temperature=0, frequency_penalty=2.0) != _say(client, temperature=0)


# --- embeddings ---------------------------------------------------------------------------------


def test_embeddings_float_and_base64(client: OpenAI) -> None:
    texts = [
        "The break statement ends a loop.",
        "How do I leave a for loop early?",
        "A lambda makes a function.",
    ]
    as_float = client.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    # The client asks for base64 by default and decodes it itself.
    as_b64 = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    assert [d.index for d in as_float.data] == [0, 1, 2] and as_float.model == EMBEDDING_MODEL
    vectors = np.array([d.embedding for d in as_float.data], dtype=np.float32)
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.array([d.embedding for d in as_b64.data]), vectors, atol=1e-7)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2]  # the loop sentences are closer to each other
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > len(texts) * 2
    single = client.embeddings.create(model=EMBEDDING_MODEL, input=texts[0], encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, vectors[0], atol=1e-5)


def test_embeddings_base64_is_little_endian_float32(client: OpenAI) -> None:
    # Asked for explicitly, base64 comes back as the string the server sent.
    encoded = client.embeddings.create(model=EMBEDDING_MODEL, input="assert", encoding_format="base64")
    vector = np.frombuffer(base64.b64decode(str(encoded.data[0].embedding)), dtype="<f4")
    as_float = client.embeddings.create(model=EMBEDDING_MODEL, input="assert", encoding_format="float")
    np.testing.assert_array_equal(vector, np.array(as_float.data[0].embedding, dtype=np.float32))


def test_async_embeddings(live_server: LiveServer) -> None:
    async def main() -> list[float]:
        async with _async_client(live_server) as client:
            response = await client.embeddings.create(
                model=EMBEDDING_MODEL, input=["pass"], encoding_format="float"
            )
            return response.data[0].embedding

    assert len(asyncio.run(main())) == 384


# --- errors become the client's exception types -------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"temperature": 5}, "temperature", "invalid_request"),
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
        ({"max_tokens": 100_000}, "max_tokens", "invalid_request"),
        ({"top_p": 0}, "top_p", "invalid_request"),
        ({"extra_body": {"no_such_field": 1}}, "no_such_field", "invalid_request"),
        ({"extra_body": {"rag": {"top_k": 0}}}, "rag.top_k", "invalid_request"),
    ],
)
def test_bad_chat_parameters_raise_bad_request(client: OpenAI, params: dict, param: str, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=CHAT_MODEL, messages=ASK, **params)
    assert err.value.status_code == 400
    assert err.value.param == param and err.value.code == code
    assert err.value.type == "invalid_request_error" and err.value.message


def test_unknown_model_is_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert err.value.code == "model_not_found" and err.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model=CHAT_MODEL, input="x")


def test_conversation_too_long_for_the_model(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "word " * 2500}],
        )
    assert err.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("inputs", "param"),
    [("", "input"), ([], "input"), ([[1, 2, 3]], "input"), ("assert " * 400, "input")],
)
def test_bad_embedding_input_raises_bad_request(client: OpenAI, inputs: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBEDDING_MODEL, input=inputs, encoding_format="float")
    assert err.value.param == param


# --- budgets and degradation (same pipeline as /v1/ask) --------------------------------------------
# The test server runs with RAG_FAULTS__ENABLED: the header adds a delay around the REAL generator's
# tokens, so the budget is broken on purpose whatever the machine's speed (see tests/live/test_budgets.py).


def test_chat_without_a_first_token_in_time_is_a_degraded_sources_only_answer(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        max_tokens=200,
        stop=[],
        extra_headers={"X-Rag-Fault-Delay": "first_token=10000", "X-Deadline-Ms": "1500"},
    )
    extra = completion.model_extra or {}
    assert extra["degraded"] is True and extra["degraded_reason"] == "first_token"
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == ""
    assert extra["sources"] and extra["sources"][0]["doc_id"] == "pyref:break"


def test_streamed_chat_cut_by_its_budget_ends_with_the_degradation(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        max_tokens=400,
        stop=[],
        stream=True,
        extra_headers={"X-Rag-Fault-Delay": "token=3000", "X-Deadline-Ms": "12000"},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length"
    extra = last.model_extra or {}
    assert extra["degraded"] is True and extra["degraded_reason"] == "generate"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text, "the answer so far is kept"
    assert extra["sources"]


def test_chat_deadline_looser_than_the_server_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=CHAT_MODEL, messages=ASK, extra_headers={"X-Deadline-Ms": "99999999"}
        )
