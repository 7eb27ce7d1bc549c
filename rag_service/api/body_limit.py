"""ASGI middleware refusing request bodies over a size limit with 413, before they are buffered.

Checks the declared Content-Length first and also counts bytes as they arrive, so a chunked
upload without a length cannot get past the limit either.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_service.api.errors import error_body
from rag_service.api.responses import OrjsonResponse


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = f"request body is larger than the limit of {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                body = error_body(self.message, "invalid_request_error", "payload_too_large")
                await OrjsonResponse(body, status_code=413)(scope, receive, send)
                return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body parsing to our error handler.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, limited_receive, send)
