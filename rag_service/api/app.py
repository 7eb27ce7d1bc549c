"""The FastAPI application: ``build_app(settings)`` wires the service, routes and error handling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from rag_service import __version__
from rag_service.api.body_limit import BodySizeLimit
from rag_service.api.errors import install_error_handlers
from rag_service.api.native import documents
from rag_service.api.native.routes import router
from rag_service.api.openai.routes import router as openai_router
from rag_service.api.openapi import openapi_schema
from rag_service.api.page import router as page_router
from rag_service.api.responses import OrjsonResponse
from rag_service.config import Settings
from rag_service.runtime.service import Service


def build_app(settings: Settings, service: Service | None = None, *, start: bool = True) -> FastAPI:
    """``start=False``: the caller started ``service`` already (a Ray Serve replica warms up before Serve
    routes to it); the app still stops it at shutdown."""
    service = service or Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Start loading in the background: /healthz answers now, /readyz once warmed up.
        starting = asyncio.create_task(service.start() if start else asyncio.sleep(0))
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await service.stop()

    app = FastAPI(
        title="rag-service",
        version=__version__,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.openapi = lambda: openapi_schema(app, settings)  # type: ignore[method-assign]
    app.state.service = service
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(openai_router)
    app.include_router(documents.router)
    app.include_router(page_router)  # GET /: the chat page
    app.add_middleware(BodySizeLimit, max_bytes=settings.server.max_body_bytes)
    return app
