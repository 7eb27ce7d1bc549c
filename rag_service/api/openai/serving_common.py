"""What chat and text completions share: sampling from the body, OpenAI's finish reasons and usage,
the response head, and the stream format (content chunks, the finish chunk with the RAG extras, an
optional usage chunk, ``{"error": {...}}`` for an error after the stream started)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rag_service.api.bodies import rag_fields
from rag_service.api.openai.protocol import (
    ChatCompletionRequest,
    CompletionBase,
    CompletionRequest,
    RagOptions,
)
from rag_service.api.params import check_limit, stop_strings
from rag_service.api.serving import event
from rag_service.config import Settings
from rag_service.domain import Sampling
from rag_service.errors import InvalidRequest
from rag_service.pipeline.budgets import Deadline
from rag_service.pipeline.pipeline import BUDGET_FINISH_REASON, Answer, AnswerRequest
from rag_service.prompting.plans import PromptPlan


def refuse_unsupported(body: ChatCompletionRequest | CompletionRequest) -> None:
    refused = body.refused_parameter()
    if refused is not None:
        param, message = refused
        raise InvalidRequest(message, code="unsupported_parameter", param=param)


def checked_top_k_and_stop(
    body: CompletionBase, rag: RagOptions | None, settings: Settings, default_stop: list[str] | None = None
) -> tuple[int, list[str]]:
    """The passages to retrieve (``rag.top_k``) and the stop strings (``default_stop``, else the
    server's, when the body has none), checked against the settings."""
    top_k = (rag.top_k if rag else None) or settings.retriever.top_k
    check_limit("rag.top_k", top_k, settings.retriever.max_top_k)
    default = settings.generator.stop if default_stop is None else default_stop
    return top_k, stop_strings(body.stop, default)


def answer_request(
    body: CompletionBase,
    plan: PromptPlan,
    rag: RagOptions | None,
    *,
    top_k: int,
    stop: list[str],
    max_tokens: int,
    settings: Settings,
    deadline: Deadline,
) -> AnswerRequest:
    """A planned completion's pipeline request: the body's sampling, the server's defaults otherwise."""
    return AnswerRequest(
        plan,
        top_k=top_k,
        max_tokens=max_tokens,
        temperature=settings.generator.temperature if body.temperature is None else body.temperature,
        stop=stop,
        deadline=deadline,
        budgets=settings.budget,
        mode=(rag.mode if rag else None) or settings.retriever.mode,
        sampling=Sampling(
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
        ),
    )


def finish_reason(answer: Answer) -> str:
    # vLLM says "stop" or "length"; an answer cut short by a budget is "length" (truncated) in
    # OpenAI's vocabulary, with `degraded_reason` naming the stage; "abort" never reaches a client
    # that is still listening.
    if answer.finish_reason == BUDGET_FINISH_REASON:
        return "length"
    return answer.finish_reason if answer.finish_reason in ("stop", "length") else "stop"


def usage(answer: Answer) -> dict[str, int]:
    u = answer.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def response_head(prefix: str, req: AnswerRequest, model: str) -> dict[str, Any]:
    return {
        "id": prefix + req.request_id.removeprefix("rag-"),
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }


class CompletionStream:
    """OpenAI's streamed completions: ``opening`` (chat: the role) first, then a chunk per text delta,
    then the ``finish_reason`` chunk with the RAG extras, then (``include_usage``) a chunk with
    ``usage`` and no choices. ``choice`` makes one choice of a chunk: ``(text, finish_reason)``."""

    def __init__(
        self,
        base: dict[str, Any],
        choice: Callable[[str | None, str | None], dict[str, Any]],
        *,
        include_usage: bool,
        opening: dict[str, Any] | None = None,
        extras: Callable[[Answer], dict[str, Any]] = rag_fields,
    ) -> None:
        self.base = {**base, "usage": None} if include_usage else base  # OpenAI: null but on the last
        self.choice = choice
        self.include_usage = include_usage
        self.opening_choice = opening
        self.extras = extras

    def _chunk(self, text: str | None, reason: str | None = None, **extra: Any) -> bytes:
        return event({**self.base, "choices": [self.choice(text, reason)], **extra})

    def opening(self) -> list[bytes]:
        if self.opening_choice is None:
            return []
        return [event({**self.base, "choices": [self.opening_choice]})]

    def delta(self, text: str) -> bytes:
        return self._chunk(text)

    def closing(self, answer: Answer) -> list[bytes]:
        frames = [self._chunk(None, finish_reason(answer), **self.extras(answer))]
        if self.include_usage:
            frames.append(event({**self.base, "choices": [], "usage": usage(answer)}))
        return frames

    def error(self, body: dict[str, Any]) -> bytes:
        return event(body)
