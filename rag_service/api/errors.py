"""Every error leaves the API as ``{"error": {"message", "type", "code", "param"}}``.

Client mistakes are 4xx with a message that names the field; only our own bugs are 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from rag_service.api.responses import OrjsonResponse
from rag_service.errors import NotReady, Overloaded, RagError, Unauthorized

log = logging.getLogger(__name__)

RETRY_AFTER_NOT_READY_S = "5"

# Starlette/FastAPI's own HTTP errors: status -> (type, code).
_HTTP_ERRORS = {
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
}


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def rag_error_response(exc: RagError) -> OrjsonResponse:
    headers: dict[str, str] | None = None
    if isinstance(exc, NotReady):
        headers = {"Retry-After": RETRY_AFTER_NOT_READY_S}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, Overloaded):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return OrjsonResponse(
        error_body(exc.message, exc.type, exc.code, exc.param), status_code=exc.status, headers=headers
    )


def _describe(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    first = errors[0] if errors else {}
    first_loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    return "; ".join(parts) or "invalid request", (".".join(first_loc) or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RagError)
    async def _rag_error(request: Request, exc: RagError) -> OrjsonResponse:
        return rag_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> OrjsonResponse:
        message, param = _describe(list(exc.errors()))
        return OrjsonResponse(
            error_body(message, "invalid_request_error", "invalid_request", param), status_code=400
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> OrjsonResponse:
        default = (
            ("invalid_request_error", "invalid_request") if exc.status_code < 500 else ("internal_error",) * 2
        )
        type_, code = _HTTP_ERRORS.get(exc.status_code, default)
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return OrjsonResponse(
            error_body(str(exc.detail), type_, code), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> OrjsonResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return OrjsonResponse(
            error_body("internal server error", "internal_error", "internal_error"), status_code=500
        )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's 405 names only the first route that
    matched the path (GET of /v1/documents/{id}, not its DELETE)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "__none__"})
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The error body for an exception that ends a response already under way (a stream's last event):
    ours with its type and code, anything else as an internal error (logged by the caller)."""
    if isinstance(exc, RagError):
        return error_body(exc.message, exc.type, exc.code, exc.param)
    return error_body("internal server error", "internal_error", "internal_error")
