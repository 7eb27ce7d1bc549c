"""The built-in chat page: ``GET /`` and its files from ``rag_service/api/static/`` (package data; no
build step, nothing fetched from elsewhere), and ``GET /page/config``, the few settings the page needs.

The page is a client of the public API like any other (``/v1/chat/completions``, the documents API,
``/readyz``); these routes serve only its files and are left out of the OpenAPI schema.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rag_service.api.openai.models import chat_model
from rag_service.api.params import service_of
from rag_service.api.responses import OrjsonResponse
from rag_service.errors import NotFound

router = APIRouter(include_in_schema=False)

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page runs only its own files: no inline script, no other origin, no plugins. Defence in depth
# beside the page's rule of showing document text with textContent only.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=1)
def static_files() -> dict[str, bytes]:
    """Every file of the static folder by name, read once: only these names are ever served."""
    folder = resources.files("rag_service.api") / "static"
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(ext) for ext in MEDIA_TYPES)
    }


def _file(name: str) -> Response:
    body = static_files().get(name)
    if body is None:
        raise NotFound(f"no page file {name!r}", param="name")
    media_type = MEDIA_TYPES[name[name.rindex(".") :]]
    return Response(body, media_type=media_type, headers=PAGE_HEADERS)


@router.get("/")
async def page() -> Response:
    return _file("index.html")


@router.get("/static/{name}")
async def page_file(name: str) -> Response:
    return _file(name)


@router.get("/page/config")
async def page_config(request: Request) -> OrjsonResponse:
    """What the page cannot learn otherwise: whether writes need a key (so it asks for one), the chat
    model's name (``/v1/models`` itself needs the key), and the limits it splits uploads by."""
    settings = service_of(request).settings
    return OrjsonResponse(
        {
            "auth_required": settings.api_key is not None,
            "model": chat_model(settings),
            "max_batch_docs": settings.ingest.max_batch_docs,
            "max_body_bytes": settings.server.max_body_bytes,
        }
    )
