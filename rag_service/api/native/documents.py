"""Documents API: batch upsert, delete, read back, index statistics.

Writes (POST, DELETE) need ``Authorization: Bearer <RAG_API_KEY>`` when a key is set. A write is
answered once it is committed to the document store (durable) and applied to the live index (the
next search sees it). Writes run one at a time on the server's ingestion thread (see
``rag_service.ingestion.ingestor.IngestWorker``), at a lower CPU priority than queries.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field, field_validator

from rag_service.api.auth import require_api_key
from rag_service.api.json_types import JsonBody, not_blank, text_field
from rag_service.api.openapi import BODY, READY, errors
from rag_service.api.params import read_your_writes, service_of
from rag_service.api.responses import OrjsonResponse
from rag_service.domain import Document
from rag_service.errors import InvalidRequest, NotFound
from rag_service.index.live import LiveIndex
from rag_service.ingestion.ingestor import validate_batch
from rag_service.runtime.components import IndexAccess
from rag_service.runtime.service import Service

router = APIRouter()
MAX_ID_CHARS = 512


class DocumentIn(JsonBody):
    id: str = text_field("Document id (chunk ids derive from it).", max_length=MAX_ID_CHARS)
    title: str = Field(
        "", max_length=1000, description="Optional title, prepended to each chunk when embedded."
    )
    text: str = text_field("The document's text; cut into token windows by the server.")

    _check_id_and_text = field_validator("id", "text")(not_blank)


class DocumentsBody(JsonBody):
    documents: list[DocumentIn] = Field(min_length=1, description="Documents to insert or replace.")


def _index(request: Request) -> tuple[Service, IndexAccess]:
    service = service_of(request)
    service.pipeline  # noqa: B018 -- raises NotReady (503) until the service is ready
    assert service.index is not None  # opened before the service is ready
    return service, service.index


def _live(request: Request) -> LiveIndex:
    return _index(request)[1].live


@router.post("/v1/documents", dependencies=[Depends(require_api_key)], responses=errors(BODY, READY, 401))
async def upsert_documents(body: DocumentsBody, request: Request) -> OrjsonResponse:
    service, index = _index(request)
    limit = service.settings.ingest.max_batch_docs
    if len(body.documents) > limit:
        raise InvalidRequest(
            f"a batch holds at most {limit} documents (RAG_INGEST__MAX_BATCH_DOCS), "
            f"got {len(body.documents)}",
            param="documents",
        )
    docs = [Document(id=d.id, title=d.title, text=d.text) for d in body.documents]
    validate_batch(docs)  # duplicate ids: the whole batch is refused before anything is written
    result = await index.upsert(docs)
    return OrjsonResponse(
        {
            "upserted": result.upserted,
            "unchanged": result.unchanged,
            "chunks": result.chunks,
            "seq": result.seq,
        }
    )


@router.get(
    "/v1/documents/{doc_id:path}", dependencies=[Depends(read_your_writes)], responses=errors(READY, 404)
)
async def get_document(doc_id: str, request: Request) -> OrjsonResponse:
    stored = _live(request).store.get(doc_id)
    if stored is None:
        raise NotFound(f"no document with id {doc_id!r}", param="id")
    return OrjsonResponse(
        {
            "id": stored.doc.id,
            "title": stored.doc.title,
            "text": stored.doc.text,
            "seq": stored.seq,
            "content_hash": stored.hash,
            "chunks": [{"id": p.id, "text": p.text} for p in stored.chunks],
        }
    )


@router.delete(
    "/v1/documents/{doc_id:path}", dependencies=[Depends(require_api_key)], responses=errors(READY, 401, 404)
)
async def delete_document(doc_id: str, request: Request) -> OrjsonResponse:
    _, index = _index(request)
    result = await index.delete(doc_id)
    if not result.deleted:
        raise NotFound(f"no document with id {doc_id!r}", param="id")
    return OrjsonResponse({"deleted": doc_id, "seq": result.seq})


@router.get("/v1/index/stats", dependencies=[Depends(read_your_writes)], responses=errors(READY))
async def index_stats(request: Request) -> OrjsonResponse:
    _, index = _index(request)
    stats: dict[str, Any] = {**index.live.stats(), **index.describe()}
    return OrjsonResponse(stats)
