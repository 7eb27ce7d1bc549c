"""Request and response bodies of our own JSON API (``/v1/ask``, ``/v1/search``).

Unknown fields are refused (a misspelt ``top_k`` should not be silently ignored). Limits that come
from settings (largest top_k, max_tokens) are checked in the routes against the live settings.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag_service.config import RetrievalMode

MODE_DESCRIPTION = (
    "Retrieval: dense (embeddings), lexical (BM25 full-text) or hybrid (both, fused); the server's "
    "default (RAG_RETRIEVER__MODE) if absent."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    return value.strip()


class AskBody(_Strict):
    question: str = Field(description="The question to answer from the indexed passages.")
    top_k: int | None = Field(None, ge=1, description="Passages to retrieve (server default if absent).")
    mode: RetrievalMode | None = Field(None, description=MODE_DESCRIPTION)
    max_tokens: int | None = Field(None, ge=1, description="Most new tokens in the answer.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature.")
    stop: list[str] | None = Field(
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

    _check_question = field_validator("question")(_not_blank)

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not s or len(s) > 64 for s in value):
            raise ValueError("stop strings must be 1 to 64 characters long")
        return value

    @field_validator("temperature", mode="before")
    @classmethod
    def _int_is_a_float(cls, value: object) -> object:
        # Strict mode would refuse `"temperature": 0`; an integer is a fine number here.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class SearchBody(_Strict):
    query: str = Field(description="Text to find passages for.")
    top_k: int | None = Field(None, ge=1, description="Hits to return (server default if absent).")
    mode: RetrievalMode | None = Field(None, description=MODE_DESCRIPTION)
    deadline_ms: int | None = Field(
        None,
        ge=1,
        description="A tighter total deadline for this request, in ms (at most RAG_BUDGET__TOTAL_MS).",
    )

    _check_query = field_validator("query")(_not_blank)
