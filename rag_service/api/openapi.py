"""What the OpenAPI schema says a route can answer: every error status it really returns, in the one
error shape, and nothing it never returns.

FastAPI declares only 200 and 422 by default; we answer validation errors with 400 (OpenAI's
convention), and refuse with 401/404/413/429/503/504 on the way, so a client generated from the default
schema is misled. Each route lists its statuses with ``errors(...)``; ``openapi_schema`` then drops the
unused 422. ``tests/live/test_api_schema.py`` fuzzes the live server against this schema (schemathesis).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from rag_service.config import Settings


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, naming the field or setting when there is one.")
    type: str = Field(description="The error class, e.g. invalid_request_error, rate_limit_error.")
    code: str = Field(description="A stable machine-readable code, e.g. invalid_request, overloaded.")
    param: str | None = Field(description="The request field at fault, when there is one.")


class ErrorResponse(BaseModel):
    """Every error the service answers, whatever the route (``rag_service/api/errors.py``)."""

    error: ErrorDetail


_WHY = {
    400: "Invalid request: a field is missing, of the wrong type or out of range (the message names it).",
    401: "Missing or wrong API key (only when RAG_API_KEY is set): send `Authorization: Bearer <key>`.",
    404: "Unknown id or model.",
    413: "Request body larger than RAG_SERVER__MAX_BODY_BYTES.",
    429: "Refused by admission control before any work (too many in flight); see Retry-After.",
    502: "The generator failed.",
    503: "Not ready (starting, failed, or over budget on this machine); see Retry-After.",
    504: "The embed or retrieve stage ran out of its budget or of the request's deadline.",
}

# Statuses shared by route kinds: a body can be invalid or too large; anything served needs a ready service.
BODY = (400, 413)
READY = (503,)
ADMITTED = (429, 503, 504)  # through admission control and the deadline


def errors(*statuses: int | tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route decorator: each status with its reason and the error shape."""
    flat = sorted({s for item in statuses for s in (item if isinstance(item, tuple) else (item,))})
    return {status: {"model": ErrorResponse, "description": _WHY[status]} for status in flat}


_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "description": "One JSON object per event, then `[DONE]`."},
    },
    "required": ["data"],
}


def event_stream(description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 that is JSON, or Server-Sent Events when the body asks for ``stream``."""
    return {
        200: {
            "description": description,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                # Before OpenAPI 3.2 an event stream's `schema` describes one event.
                "text/event-stream": {"schema": _SSE_EVENT},
            },
        }
    }


def openapi_schema(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's schema without the 422 that no route answers (validation errors are 400 here), with
    the limits that come from this server's settings."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        _exact_int64_bounds(components)
        for (model, field), limit in _setting_limits(settings).items():
            if field in components.get(model, {}).get("properties", {}):
                _constrain(components[model]["properties"][field], limit)
        app.openapi_schema = schema
    return app.openapi_schema


def _setting_limits(settings: Settings) -> dict[tuple[str, str], dict[str, float]]:
    """(body model, field) -> the JSON Schema bound the routes check against the settings."""
    top_k: dict[str, float] = {"maximum": settings.retriever.max_top_k}
    max_tokens: dict[str, float] = {"maximum": settings.generator.max_tokens_limit}
    deadline: dict[str, float] = {"maximum": settings.budget.total_ms}
    text: dict[str, float] = {"maxLength": settings.server.max_question_chars}
    return {
        ("AskBody", "question"): text,
        ("AskBody", "top_k"): top_k,
        ("AskBody", "max_tokens"): max_tokens,
        ("AskBody", "deadline_ms"): deadline,
        ("SearchBody", "query"): text,
        ("SearchBody", "top_k"): top_k,
        ("SearchBody", "deadline_ms"): deadline,
        ("DocumentsBody", "documents"): {"maxItems": settings.ingest.max_batch_docs},
        ("ChatCompletionRequest", "max_tokens"): max_tokens,
        ("ChatCompletionRequest", "max_completion_tokens"): max_tokens,
        ("CompletionRequest", "max_tokens"): max_tokens,
        ("RagOptions", "top_k"): top_k,
        ("CompletionRagOptions", "top_k"): top_k,
    }


def _constrain(prop: dict[str, Any], limit: dict[str, float]) -> None:
    """Adds the bound to the field's type, not to its `null` alternative."""
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    for branch in branches:
        branch.update(limit)


def _exact_int64_bounds(node: Any) -> None:
    """FastAPI's OpenAPI model stores bounds as floats, so ``seed``'s 2**63 - 1 became 2.0**63 and
    the schema allowed one more than the server does; put the exact integers back."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key, exact in (("maximum", 2**63 - 1), ("minimum", -(2**63))):
                if isinstance(node.get(key), float) and abs(node[key]) == 2.0**63:
                    node[key] = exact
        for value in node.values():
            _exact_int64_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _exact_int64_bounds(value)
