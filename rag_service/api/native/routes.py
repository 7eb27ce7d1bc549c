"""HTTP routes of our own API: health, readiness, metrics, search and ask (JSON or Server-Sent Events).

Every search and ask gets its deadline at arrival (the server's total, or a tighter one the client
asks for) and passes admission control before any work is done (``rag_service/api/serving.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from rag_service.api.bodies import retrieval_field, server_timing, source
from rag_service.api.native.protocol import AskBody, SearchBody
from rag_service.api.native.serving import AskStream, answer_body, ask_request
from rag_service.api.openapi import ADMITTED, BODY, errors, event_stream
from rag_service.api.params import (
    check_limit,
    check_text,
    read_your_writes,
    request_deadline,
    request_pipeline,
    service_of,
)
from rag_service.api.responses import OrjsonResponse
from rag_service.api.serving import admit, answer_once, run_admitted, sse_response, stream_answer
from rag_service.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from rag_service.runtime.service import State

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it may still be loading)."""
    return {"status": "alive"}


@router.get("/readyz", responses={503: {"description": "Not ready: the same body, with the reason."}})
async def readyz(request: Request) -> OrjsonResponse:
    """200 once every stage is loaded, warmed up and answered fresh questions within its budget; 503
    with the reason before, on failure, or when the budgets cannot be met here (``over_budget``).
    Also: the machine, the dtypes chosen and why, the budgets, and what the budget check measured."""
    service = service_of(request)
    service.check()
    body: dict[str, Any] = {"status": service.state.value, "reason": service.reason}
    if service.state is State.READY:
        body["cold_start_s"] = service.cold_start_s
    body.update(service.describe())
    if service.state is State.READY:
        return OrjsonResponse(body)
    return OrjsonResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format: our rag_* collectors, then vLLM's own vllm:* engine metrics."""
    return Response(service_of(request).metrics.render(), media_type=METRICS_CONTENT_TYPE)


@router.post("/v1/search", dependencies=[Depends(read_your_writes)], responses=errors(BODY, ADMITTED))
async def search(body: SearchBody, request: Request) -> OrjsonResponse:
    service = service_of(request)
    deadline = request_deadline(request, body.deadline_ms, service)
    pipeline = request_pipeline(request, service)
    settings = service.settings
    top_k = check_limit("top_k", body.top_k or settings.retriever.top_k, settings.retriever.max_top_k)
    check_text("query", body.query, settings.server.max_question_chars)
    ticket = await admit(service, "search", deadline)
    result = await run_admitted(
        service, "search", request, ticket, pipeline.search(body.query.strip(), top_k, deadline, body.mode)
    )
    return OrjsonResponse(
        {
            "hits": [source(h) for h in result.hits],
            "retrieval": retrieval_field(result.retrieval),
            "timings_ms": result.timings_ms,
        },
        headers={"Server-Timing": server_timing(result.timings_ms)},
    )


@router.post(
    "/v1/ask",
    dependencies=[Depends(read_your_writes)],
    response_model=None,
    responses={**event_stream("The answer, or its events with `stream`."), **errors(BODY, ADMITTED, 502)},
)
async def ask(body: AskBody, request: Request) -> Response:
    service = service_of(request)
    deadline = request_deadline(request, body.deadline_ms, service)
    pipeline = request_pipeline(request, service)
    req = ask_request(body, pipeline, service.settings, deadline)
    ticket = await admit(service, "ask", deadline)  # before any work; 429 when refused
    if body.stream:
        frames = stream_answer(service.metrics, "ask", pipeline, req, ticket, AskStream())
        return sse_response(ticket, frames, req.request_id)
    answer = await answer_once(service, "ask", request, pipeline, req, ticket)
    return OrjsonResponse(
        answer_body(answer),
        headers={"Server-Timing": server_timing(answer.timings_ms), "X-Request-Id": answer.request_id},
    )
