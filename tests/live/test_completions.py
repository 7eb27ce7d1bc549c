"""``/v1/completions`` against the live server (real encoder, FAISS and vLLM): the official client's
``completions.create``, streamed and not, with and without retrieval; OpenAI's shapes; the refusals."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.http import assert_error, sse_payloads
from tests.support.server import LiveServer

MODEL = "smollm2-135m-instruct"
QUESTION = "What happens when a break statement is executed inside a loop?"
PROMPT = "The Python statement that exits the innermost loop is called"


@pytest.fixture(scope="module")
def oai(live_server: LiveServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_a_text_completion_continues_the_prompt_as_sent(oai: OpenAI, client: httpx.Client) -> None:
    prompt = PROMPT
    completion = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    choice = completion.choices[0]
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == MODEL and choice.index == 0 and choice.text
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and 0 < usage.completion_tokens <= 12
    # Retrieval is off by default: the prompt's own tokens, no template, no passages.
    ids = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1}).json()
    assert usage.prompt_tokens == ids["usage"]["prompt_tokens"] < 20
    extra = completion.model_extra or {}
    assert extra["sources"] == [] and extra["retrieval"] is None and extra["context"]["tokens"] == 0
    again = oai.completions.create(model=MODEL, prompt=[prompt], max_tokens=12, temperature=0)
    assert again.choices[0].text == choice.text  # a list of one prompt is that prompt


def test_retrieval_on_asks_the_prompt_as_a_question_with_passages(oai: OpenAI) -> None:
    completion = oai.completions.create(
        model=MODEL, prompt=QUESTION, max_tokens=48, extra_body={"rag": {"retrieval": True, "top_k": 3}}
    )
    extra = completion.model_extra or {}
    assert extra["sources"] and extra["sources"][0]["doc_id"] == "pyref:break"
    assert extra["retrieval"]["mode"] == "hybrid" and extra["context"]["tokens"] > 0
    assert completion.usage is not None and completion.usage.prompt_tokens > extra["context"]["tokens"]
    assert completion.choices[0].text


def test_a_streamed_completion_with_usage(oai: OpenAI) -> None:
    chunks = list(
        oai.completions.create(
            model=MODEL,
            prompt=PROMPT,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0
    # No stop string by default on a raw prompt: every generated token reaches the text.
    assert "".join(texts) and finish in (["stop"], ["length"])
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    # The same completion whole is the streamed text exactly, its leading space included (greedy).
    whole = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16)
    assert whole.choices[0].text == "".join(texts)


def test_the_stream_carries_the_rag_extras_on_the_finish_chunk(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": QUESTION, "max_tokens": 8, "stream": True, "rag": {"retrieval": True}}
    events = sse_payloads(client.post("/v1/completions", json=body).content)
    finishing = [e for e in events if e["choices"][0]["finish_reason"]]
    assert len(finishing) == 1 and finishing[0]["sources"][0]["doc_id"] == "pyref:break"
    assert "timings_ms" in finishing[0] and finishing[0]["degraded"] is False


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": ["one", "two"]}, "prompt", "invalid_request"),
        ({"prompt": [1, 2, 3]}, "prompt", "unsupported_value"),
        ({"prompt": "   "}, "prompt", "invalid_request"),
        ({"prompt": "x", "n": 2}, "n", "unsupported_parameter"),
        ({"prompt": "x", "echo": True}, "echo", "unsupported_parameter"),
        ({"prompt": "x", "logprobs": 2}, "logprobs", "unsupported_parameter"),
        ({"prompt": "x", "max_tokens": 100_000}, "max_tokens", "invalid_request"),
        ({"prompt": "x " * 3000}, "prompt", "context_length_exceeded"),
    ],
)
def test_bad_completion_requests_are_refused(client: httpx.Client, body: dict, param: str, code: str) -> None:
    error = assert_error(client.post("/v1/completions", json={"model": MODEL, **body}), 400, code)
    assert error["param"] == param


def test_the_official_client_raises_for_a_refused_completion(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model=MODEL, prompt="x", n=2)
    assert err.value.code == "unsupported_parameter"
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")
