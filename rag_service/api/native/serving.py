"""Our own API's answers: a ``/v1/ask`` body -> a pipeline request, an ``Answer`` -> its JSON body,
and its stream format (``delta`` events, one ``done`` event, or an ``error`` event)."""

from __future__ import annotations

from typing import Any

from rag_service.api.bodies import rag_fields
from rag_service.api.native.protocol import AskBody
from rag_service.api.params import check_limit, check_text, stop_strings
from rag_service.api.serving import event
from rag_service.config import Settings
from rag_service.pipeline.budgets import Deadline
from rag_service.pipeline.pipeline import Answer, AnswerRequest, Pipeline


def ask_request(body: AskBody, pipeline: Pipeline, settings: Settings, deadline: Deadline) -> AnswerRequest:
    """Validates the body against the live settings, then plans the question (``plan_question``)."""
    gen = settings.generator
    top_k = check_limit("top_k", body.top_k or settings.retriever.top_k, settings.retriever.max_top_k)
    max_tokens = check_limit("max_tokens", body.max_tokens or gen.max_tokens, gen.max_tokens_limit)
    check_text("question", body.question, settings.server.max_question_chars)
    return pipeline.new_request(
        body.question.strip(),  # the length limit is on the text as sent, as the schema says
        top_k=top_k,
        max_tokens=max_tokens,
        temperature=gen.temperature if body.temperature is None else body.temperature,
        stop=stop_strings(body.stop, gen.stop),
        deadline=deadline,
        mode=body.mode,
    )


def answer_body(answer: Answer) -> dict[str, Any]:
    return {
        "request_id": answer.request_id,
        "answer": answer.text,
        "finish_reason": answer.finish_reason,
        **rag_fields(answer),
        "usage": {
            "prompt_tokens": answer.usage.prompt_tokens,
            "completion_tokens": answer.usage.completion_tokens,
            "context_tokens": answer.usage.context_tokens,
        },
    }


class AskStream:
    """``delta`` events with answer text, one ``done`` event with sources, timings, usage and the
    degraded flag, or an ``error`` event."""

    def opening(self) -> list[bytes]:
        return []

    def delta(self, text: str) -> bytes:
        return event({"type": "delta", "text": text})

    def closing(self, answer: Answer) -> list[bytes]:
        return [event({"type": "done", **answer_body(answer)})]

    def error(self, body: dict[str, Any]) -> bytes:
        return event({"type": "error", **body})
