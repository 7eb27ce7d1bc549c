"""``/v1/completions``: OpenAI's (legacy) text completions, what LlamaIndex's ``OpenAILike`` with
``is_chat_model=False`` and the official clients' ``completions.create`` call.

The prompt is one string (or a list of one). Retrieval is off by default: a completion client sends a
finished prompt (often with its own retrieved context, as LlamaIndex's query engines do) and expects
it continued as sent, with no template and nothing inserted; ``rag: {"retrieval": true}`` asks the
prompt as a question instead, with passages, exactly as ``/v1/ask`` would (README, "Completions").
"""

from __future__ import annotations

from typing import Any

from rag_service.api.bodies import rag_fields
from rag_service.api.openai.protocol import CompletionRequest
from rag_service.api.openai.serving_common import (
    CompletionStream,
    answer_request,
    checked_top_k_and_stop,
    finish_reason,
    refuse_unsupported,
    usage,
)
from rag_service.api.params import check_limit, check_text
from rag_service.config import Settings
from rag_service.errors import InvalidRequest
from rag_service.pipeline.budgets import Deadline
from rag_service.pipeline.pipeline import Answer, AnswerRequest, Pipeline
from rag_service.prompting.plans import PromptPlan, plan_question, plan_text

ID_PREFIX = "cmpl-"


def _prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> str:
    if isinstance(prompt, str):
        texts: list[Any] = [prompt]
    else:
        texts = list(prompt)
    if not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(
            "token-id prompts are not supported: send text (the ids would be another tokenizer's)",
            code="unsupported_value",
            param="prompt",
        )
    if len(texts) != 1:
        raise InvalidRequest("send one prompt per request (a string, or a list of one)", param="prompt")
    text = str(texts[0])
    if not text.strip():
        raise InvalidRequest("prompt must contain non-whitespace text", param="prompt")
    return text


def completion_request(
    body: CompletionRequest, pipeline: Pipeline, settings: Settings, deadline: Deadline
) -> AnswerRequest:
    """Validates the body against the live settings and plans the prompt (CPU work: tokenizing)."""
    refuse_unsupported(body)
    rag = body.rag
    gen = settings.generator
    text = _prompt(body.prompt)
    max_tokens = check_limit("max_tokens", body.max_tokens or gen.max_tokens, gen.max_tokens_limit)
    retrieval = rag is not None and rag.retrieval
    # A raw prompt has no stop string unless asked (OpenAI's default): the server's default (a blank
    # line) is the RAG answer's end, and would cut a text continued as sent after its first paragraph.
    top_k, stop = checked_top_k_and_stop(body, rag, settings, None if retrieval else [])
    plan: PromptPlan
    if retrieval:
        check_text("prompt", text, settings.server.max_question_chars)
        plan = plan_question(
            pipeline.prompts,
            text.strip(),
            max_model_len=gen.max_model_len,
            max_tokens=max_tokens,
            context_tokens=settings.retriever.context_tokens,
        )
    else:
        plan = plan_text(pipeline.prompts, text, max_model_len=gen.max_model_len, max_tokens=max_tokens)
    return answer_request(
        body, plan, rag, top_k=top_k, stop=stop, max_tokens=max_tokens, settings=settings, deadline=deadline
    )


def text_completion(head: dict[str, Any], answer: Answer) -> dict[str, Any]:
    return {
        **head,
        "object": "text_completion",
        "choices": [
            {"text": answer.generated, "index": 0, "logprobs": None, "finish_reason": finish_reason(answer)}
        ],
        "usage": usage(answer),
        **rag_fields(answer),
    }


def _text_choice(text: str | None, reason: str | None) -> dict[str, Any]:
    return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": reason}


def completion_stream(head: dict[str, Any], include_usage: bool) -> CompletionStream:
    """``text_completion`` chunks: one per text delta, then ``finish_reason`` with the RAG extras, then
    (``include_usage``) a chunk with ``usage`` and no choices."""
    return CompletionStream({**head, "object": "text_completion"}, _text_choice, include_usage=include_usage)
