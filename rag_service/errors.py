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


class ReplicaBehind(RagError):
    """A request named a sequence number (``X-Rag-Min-Seq``) this replica had not applied in time."""

    status = 503
    type = "service_unavailable"
    code = "replica_behind"


class GenerationFailed(RagError):
    status = 502
    type = "generation_error"
    code = "generation_failed"


class ModelNotFound(InvalidRequest):
    """A ``model`` the OpenAI-compatible API does not serve (see ``GET /v1/models``)."""

    status = 404
    code = "model_not_found"


class DeadlineExceeded(RagError):
    """A stage that cannot be cut short gracefully (embed, retrieve) ran out of its budget or of the
    request's deadline. ``stage`` names it; the code is ``<stage>_timeout``."""

    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"

    def __init__(self, message: str, *, stage: str) -> None:
        super().__init__(message, code=f"{stage}_timeout")
        self.stage = stage


class Overloaded(RagError):
    """Admission control refused the request before any work: too many requests, or it could not
    start before its deadline. Answered with 429 and ``Retry-After``."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(RagError):
    """An id that is not there (e.g. an unknown document)."""

    status = 404
    type = "not_found_error"
    code = "not_found"
