"""Optional bearer-token check for write endpoints and the OpenAI-compatible API.

When ``RAG_API_KEY`` is set, a route that depends on ``require_api_key`` answers 401 unless the
request carries ``Authorization: Bearer <key>`` (what the official OpenAI clients send as ``api_key``).
Read-only routes of our own API (ask, search, health) stay open, as in most self-hosted servers.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from rag_service.errors import Unauthorized


def check_api_key(expected: str | None, authorization: str | None) -> None:
    """Raise ``Unauthorized`` unless ``authorization`` is ``Bearer <expected>`` (or no key is set)."""
    if expected is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    # Constant-time comparison: the key must not leak through response timing.
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("invalid API key", code="invalid_api_key")


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: ``dependencies=[Depends(require_api_key)]`` on a route or router."""
    key = request.app.state.service.settings.api_key
    check_api_key(key.get_secret_value() if key is not None else None, request.headers.get("authorization"))
