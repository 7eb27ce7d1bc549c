"""Request bodies of the OpenAI-compatible API (``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``).

Every field OpenAI documents for these requests is accepted by the parser, so a client never meets
a confusing "extra field" error for a standard field; each one is then either honoured, accepted
as bookkeeping that cannot change the answer, or refused with a 400 naming it (``refused_parameter``).
Fields OpenAI does not document are refused, as OpenAI does ("Unrecognized request argument").
Our own extension is one object, ``rag``. Responses are built as plain dicts by the serving modules.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rag_service.api.json_types import JsonBody
from rag_service.api.native.protocol import MODE_DESCRIPTION
from rag_service.config import RetrievalMode

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ChatMessage(JsonBody):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # A string, or a list of content parts of which only {"type": "text", "text": ...} is supported.
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(None, description="Accepted, not used: the chat template has no names.")
    # What clients echo back from an earlier assistant message; only empty values are accepted.
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: Any = None
    tool_calls: list[Any] | None = None
    function_call: Any = None
    tool_call_id: str | None = None


class StreamOptions(JsonBody):
    include_usage: bool | None = Field(None, description="Add a last chunk with `usage` and no choices.")
    include_obfuscation: bool | None = Field(
        None, description="Accepted, not used: chunks carry no obfuscation padding here."
    )


class RagOptions(JsonBody):
    """Our extension (the official clients send it with ``extra_body={"rag": {...}}``)."""

    retrieval: bool = Field(True, description="false: plain chat, no passages retrieved.")
    top_k: int | None = Field(None, ge=1, description="Passages to retrieve (server default if absent).")
    mode: RetrievalMode | None = Field(None, description=MODE_DESCRIPTION)


class CompletionBase(JsonBody):
    """What chat and text completions share: the model, sampling, streaming, and the refusals of both."""

    model: str
    # Honoured.
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # Honoured where the value asks for what we do anyway, refused otherwise (see refused_parameter).
    n: int | None = Field(None, ge=1)
    logit_bias: dict[str, float] | None = None
    # Bookkeeping that cannot change the answer: accepted and not used.
    user: str | None = None

    def _shared_refusals(self) -> list[tuple[str, bool, str]]:
        return [
            ("n", (self.n or 1) > 1, "n > 1 is not supported: ask once per completion"),
            (
                "logit_bias",
                bool(self.logit_bias),
                "logit_bias is not supported: its token ids are another tokenizer's",
            ),
            (
                "stream_options",
                self.stream_options is not None and not self.stream,
                "stream_options is only allowed when stream is true",
            ),
        ]

    @staticmethod
    def _first(checks: list[tuple[str, bool, str]]) -> tuple[str, str] | None:
        return next(((param, message) for param, refused, message in checks if refused), None)


class ChatCompletionRequest(CompletionBase):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    rag: RagOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    store: bool | None = None
    # Bookkeeping that cannot change the answer: accepted and not used.
    parallel_tool_calls: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None

    def refused_parameter(self) -> tuple[str, str] | None:
        """``(param, message)`` for the first field asking for something this server cannot do."""
        checks: list[tuple[str, bool, str]] = [
            *self._shared_refusals(),
            ("logprobs", bool(self.logprobs), "logprobs are not supported"),
            ("top_logprobs", bool(self.top_logprobs), "logprobs are not supported"),
            ("tools", bool(self.tools), "tools are not supported"),
            ("functions", bool(self.functions), "functions are not supported"),
            (
                "tool_choice",
                self.tool_choice not in (None, "none", "auto"),
                "tool_choice is not supported (no tools)",
            ),
            (
                "function_call",
                self.function_call not in (None, "none", "auto"),
                "function_call is not supported (no functions)",
            ),
            (
                "response_format",
                (self.response_format or {"type": "text"}).get("type") != "text",
                "only response_format {'type': 'text'} is supported",
            ),
            ("modalities", (self.modalities or ["text"]) != ["text"], "only the text modality is supported"),
            ("audio", self.audio is not None, "audio output is not supported"),
            ("prediction", self.prediction is not None, "predicted outputs are not supported"),
            ("web_search_options", self.web_search_options is not None, "web search is not supported"),
            ("reasoning_effort", self.reasoning_effort is not None, "the model is not a reasoning model"),
            ("verbosity", self.verbosity is not None, "verbosity is not supported"),
            ("store", bool(self.store), "this server does not store completions"),
            (
                "max_tokens",
                None not in (self.max_tokens, self.max_completion_tokens)
                and self.max_tokens != self.max_completion_tokens,
                "max_tokens and max_completion_tokens disagree: send one of them",
            ),
        ]
        return self._first(checks)


class EmbeddingRequest(JsonBody):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, description="Accepted, not used.")


class CompletionRagOptions(RagOptions):
    """``rag`` on ``/v1/completions``: retrieval is off unless asked for (README, "Completions")."""

    retrieval: bool = Field(
        False, description="true: retrieve for the prompt and ask it as a question, with the passages."
    )


class CompletionRequest(CompletionBase):
    # A string, or a list of one string; token-id prompts are refused (another tokenizer's ids).
    prompt: str | list[str] | list[int] | list[list[int]]
    rag: CompletionRagOptions | None = None
    # Honoured where the value asks for what we do anyway, refused otherwise (see refused_parameter).
    best_of: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    suffix: str | None = None

    def refused_parameter(self) -> tuple[str, str] | None:
        """``(param, message)`` for the first field asking for something this server cannot do."""
        return self._first(
            [
                *self._shared_refusals(),
                ("best_of", (self.best_of or 1) > 1, "best_of > 1 is not supported"),
                ("logprobs", bool(self.logprobs), "logprobs are not supported"),
                ("echo", bool(self.echo), "echo is not supported"),
                ("suffix", bool(self.suffix), "suffix (insertion) is not supported"),
            ]
        )
