"""One exception tree for the service. Each class carries the HTTP status and error type it maps to.

Components raise these; ``rag_service.api.errors`` turns them into ``{"error": {...}}`` responses.
"""

from __future__ import annotations


class RagError(Exception):
    """Base of every error the service raises on purpose."""

    status = 500
    type = "internal_error"
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(RagError):
    """The client sent something we cannot serve (empty question, too long, out of range)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class Unauthorized(RagError):
    """Missing or wrong API key (only when ``RAG_API_KEY`` is set)."""

    status = 401
    type = "authentication_error"
    code = "unauthorized"


class NotReady(RagError):
    """The service is still starting (models loading, warm-up) or failed to start."""

    status = 503
    type = "service_unavailable"
    code = "not_ready"


class IndexUnavailable(RagError):
    """The index on disk is missing, corrupt, or was built with another encoder."""

    status = 503
    type = "service_unavailable"
    code = "index_unavailable"


class GenerationFailed(RagError):
    status = 502
    type = "generation_error"
    code = "generation_failed"


class NotFound(RagError):
    """An id that is not there (e.g. an unknown document)."""

    status = 404
    type = "not_found_error"
    code = "not_found"
