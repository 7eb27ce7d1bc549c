"""Request and response bodies of our own JSON API (``/v1/ask``, ``/v1/search``).

Unknown fields are refused (a misspelt ``top_k`` should not be silently ignored). Limits that come
from settings (largest top_k, max_tokens) are checked in the routes against the live settings.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from rag_service.api.json_types import JsonBody, not_blank, text_field
from rag_service.api.params import MAX_STOP_CHARS
from rag_service.config import RetrievalMode

StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]

MODE_DESCRIPTION = (
    "Retrieval: dense (embeddings), lexical (BM25 full-text) or hybrid (both, fused); the server's "
    "default (RAG_RETRIEVER__MODE) if absent."
)


class AskBody(JsonBody):
    question: str = text_field("The question to answer from the indexed passages.")
    top_k: int | None = Field(None, ge=1, description="Passages to retrieve (server default if absent).")
    mode: RetrievalMode | None = Field(None, description=MODE_DESCRIPTION)
    max_tokens: int | None = Field(None, ge=1, description="Most new tokens in the answer.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature.")
    stop: list[StopString] | None = Field(
        None,
        max_length=4,
        description="Strings that end the answer (at most 4); the server's default when absent, [] for none.",
    )
    stream: bool = Field(False, description="Answer as Server-Sent Events.")
    deadline_ms: int | None = Field(
        None,
        ge=1,
        description="A tighter total deadline for this request, in ms (at most RAG_BUDGET__TOTAL_MS).",
    )

    _check_question = field_validator("question")(not_blank)

    @field_validator("temperature", mode="before")
    @classmethod
    def _int_is_a_float(cls, value: object) -> object:
        # Strict mode would refuse `"temperature": 0`; an integer is a fine number here.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class SearchBody(JsonBody):
    query: str = text_field("Text to find passages for.")
    top_k: int | None = Field(None, ge=1, description="Hits to return (server default if absent).")
    mode: RetrievalMode | None = Field(None, description=MODE_DESCRIPTION)
    deadline_ms: int | None = Field(
        None,
        ge=1,
        description="A tighter total deadline for this request, in ms (at most RAG_BUDGET__TOTAL_MS).",
    )

    _check_query = field_validator("query")(not_blank)
