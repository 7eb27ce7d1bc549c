"""``/v1/chat/completions``: messages -> a ``ConversationPlan`` (``rag_service/prompting/plans.py``)
-> the same pipeline as ``/v1/ask``; the response and stream in OpenAI's shapes plus the RAG extras."""

from __future__ import annotations

from typing import Any

from rag_service.api.bodies import rag_fields
from rag_service.api.openai.protocol import ChatCompletionRequest, ChatMessage
from rag_service.api.openai.serving_common import (
    CompletionStream,
    answer_request,
    checked_top_k_and_stop,
    finish_reason,
    refuse_unsupported,
    usage,
)
from rag_service.api.params import check_limit
from rag_service.config import Settings
from rag_service.errors import InvalidRequest
from rag_service.pipeline.budgets import Deadline
from rag_service.pipeline.pipeline import Answer, AnswerRequest, Pipeline
from rag_service.prompting.plans import ConversationPlan, Message, Role, plan_conversation

ID_PREFIX = "chatcmpl-"


def _text(message: ChatMessage, i: int) -> str:
    content = message.content
    if content is None:
        raise InvalidRequest(f"messages[{i}].content is required", param=f"messages[{i}].content")
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"messages[{i}].content[{j}]: only text parts are supported, got {part.get('type')!r}",
                code="unsupported_value",
                param=f"messages[{i}].content",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def conversation(messages: list[ChatMessage]) -> list[Message]:
    result = []
    for i, m in enumerate(messages):
        if m.role in ("tool", "function"):
            raise InvalidRequest(
                f"messages[{i}]: {m.role} messages are not supported (no tools)",
                code="unsupported_value",
                param=f"messages[{i}].role",
            )
        if m.tool_calls or m.function_call is not None or m.audio is not None:
            raise InvalidRequest(
                f"messages[{i}]: tool calls and audio are not supported",
                code="unsupported_value",
                param=f"messages[{i}]",
            )
        # OpenAI's newer "developer" role is the system role of older models.
        role: Role = (
            "system" if m.role in ("system", "developer") else "user" if m.role == "user" else "assistant"
        )
        result.append(Message(role, _text(m, i)))
    return result


def chat_request(
    body: ChatCompletionRequest, pipeline: Pipeline, settings: Settings, deadline: Deadline
) -> tuple[AnswerRequest, ConversationPlan]:
    """Validates the body against the live settings and fits the conversation (CPU work: tokenizing)."""
    refuse_unsupported(body)
    rag = body.rag
    gen = settings.generator
    max_tokens = check_limit(
        "max_completion_tokens" if body.max_completion_tokens else "max_tokens",
        body.max_completion_tokens or body.max_tokens or gen.max_tokens,
        gen.max_tokens_limit,
    )
    top_k, stop = checked_top_k_and_stop(body, rag, settings)
    plan = plan_conversation(
        pipeline.prompts,
        conversation(body.messages),
        system_prompt=gen.rag_instruction,
        retrieve=rag is None or rag.retrieval,
        max_model_len=gen.max_model_len,
        max_tokens=max_tokens,
        context_tokens=settings.retriever.context_tokens,
        max_query_chars=settings.server.max_question_chars,
    )
    req = answer_request(
        body, plan, rag, top_k=top_k, stop=stop, max_tokens=max_tokens, settings=settings, deadline=deadline
    )
    return req, plan


def chat_extras(answer: Answer, plan: ConversationPlan) -> dict[str, Any]:
    """The RAG additions to OpenAI's shapes, the same figures as ``/v1/ask`` gives."""
    return rag_fields(answer, messages_dropped=plan.messages_dropped)


def chat_completion(head: dict[str, Any], answer: Answer, plan: ConversationPlan) -> dict[str, Any]:
    return {
        **head,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(answer),
            }
        ],
        "usage": usage(answer),
        **chat_extras(answer, plan),
    }


def _chat_choice(text: str | None, reason: str | None) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}


def chat_stream(head: dict[str, Any], plan: ConversationPlan, include_usage: bool) -> CompletionStream:
    """``chat.completion.chunk`` events: the role first, then content deltas, then ``finish_reason``
    with the RAG extras, then (``include_usage``) a chunk with ``usage`` and no choices."""
    return CompletionStream(
        {**head, "object": "chat.completion.chunk"},
        _chat_choice,
        include_usage=include_usage,
        opening={
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        },
        extras=lambda answer: chat_extras(answer, plan),
    )
