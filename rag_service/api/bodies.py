"""The response fields both APIs share: a passage as the API shows it, how it was retrieved, the
context block, and the ``Server-Timing`` header."""

from __future__ import annotations

from typing import Any

from rag_service.domain import Hit, SearchOutcome
from rag_service.pipeline.pipeline import Answer

NOT_JUDGED = {"grounded": None, "grounded_reason": None}


def source(hit: Hit) -> dict[str, Any]:
    """A passage as the API shows it; ``retrievers``: its rank in each retriever's list, e.g.
    ``{"dense": 3, "lexical": 1}`` (hybrid), and ``score`` is that mode's (see ``Hit``)."""
    p = hit.passage
    return {
        "id": p.id,
        "doc_id": p.doc_id,
        "title": p.title,
        "text": p.text,
        "score": round(hit.score, 6),
        "retrievers": hit.retrievers,
    }


def retrieval_field(outcome: SearchOutcome | None) -> dict[str, str | None] | None:
    """``{"mode", "fallback", "reason"}``: fallback "dense" when a hybrid search's lexical side was
    late (reason lexical_late) or failed (lexical_failed) and the dense list was used alone; "lexical"
    when its embedding was late (embed_late) and the lexical list was used alone."""
    return outcome.describe() if outcome is not None else None


def rag_fields(answer: Answer, **context_extra: Any) -> dict[str, Any]:
    """What the RAG pipeline adds to an answer, in every API: sources, retrieval, timings, the context
    block, and whether a budget cut it short (the answer so far, and the stage that ran late)."""
    ctx = answer.context
    return {
        "sources": [source(h) for h in ctx.hits],
        "retrieval": retrieval_field(answer.retrieval),
        "timings_ms": answer.timings_ms,
        "context": {
            "budget": ctx.budget,
            "tokens": ctx.tokens,
            "dropped": [h.passage.id for h in ctx.dropped],
            **context_extra,
        },
        "degraded": answer.degraded,
        "degraded_reason": answer.degraded_reason,
        "cached": answer.cached,  # reused from the answer cache, not generated for this request
        # Whether the passages support the answer: false with the reason (prompting/grounding.py),
        # null without retrieval (plain chat).
        **(answer.grounding.describe() if answer.grounding else NOT_JUDGED),
    }


def server_timing(timings_ms: dict[str, float]) -> str:
    return ", ".join(f"{stage};dur={ms}" for stage, ms in timings_ms.items())
