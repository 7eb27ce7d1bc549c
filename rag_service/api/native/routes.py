"""HTTP routes of our own API: health, readiness, metrics, search and ask (JSON or Server-Sent Events).

Every search and ask gets its deadline at arrival (the server's total, or a tighter one the client
asks for) and passes admission control before any work is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import aclosing
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from rag_service.api.errors import error_body
from rag_service.api.native.protocol import AskBody, SearchBody
from rag_service.api.responses import OrjsonResponse
from rag_service.domain import Hit, SearchOutcome
from rag_service.errors import InvalidRequest, Overloaded, RagError
from rag_service.pipeline.pipeline import Answer, AskRequest, Deadline, Pipeline
from rag_service.runtime.admission import Ticket
from rag_service.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from rag_service.runtime.service import Service, State
from rag_service.testing.faults import HEADER as FAULT_HEADER
from rag_service.testing.faults import FaultDelays

log = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")
DEADLINE_HEADER = "x-deadline-ms"


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _check_limit(name: str, value: int, limit: int) -> None:
    if value > limit:
        raise InvalidRequest(f"{name} must be at most {limit}, got {value}", param=name)


def _check_text(name: str, text: str, service: Service) -> None:
    limit = service.settings.server.max_question_chars
    if len(text) > limit:
        raise InvalidRequest(f"{name} is {len(text)} characters long; the limit is {limit}", param=name)


def source(hit: Hit) -> dict[str, Any]:
    """A passage as the API shows it; ``retrievers``: its rank in each retriever's list, e.g.
    ``{"dense": 3, "lexical": 1}`` (hybrid), and ``score`` is that mode's (see ``Hit``)."""
    p = hit.passage
    return {
        "id": p.id,
        "doc_id": p.doc_id,
        "title": p.title,
        "text": p.text,
        "score": round(hit.score, 6),
        "retrievers": hit.retrievers,
    }


def retrieval_body(retrieval: SearchOutcome | None) -> dict[str, str | None] | None:
    """``{"mode", "fallback", "reason"}``: fallback "dense" when a hybrid search's lexical side was
    late (reason lexical_late) or failed (lexical_failed) and the dense list was used alone; "lexical"
    when its embedding was late (embed_late) and the lexical list was used alone."""
    return retrieval.describe() if retrieval is not None else None


def server_timing(timings_ms: dict[str, float]) -> str:
    return ", ".join(f"{stage};dur={ms}" for stage, ms in timings_ms.items())


def request_deadline(request: Request, body_ms: int | None, service: Service) -> Deadline:
    """The server's total deadline, or a tighter one from the body (deadline_ms) or the header
    (X-Deadline-Ms); the tighter of the two wins. Never looser than the server's: that is a 400."""
    limit = service.settings.budget.total_ms
    asked: list[float] = []
    if body_ms is not None:
        asked.append(body_ms)
    header = request.headers.get(DEADLINE_HEADER)
    if header is not None:
        try:
            value = float(header)
        except ValueError:
            raise InvalidRequest(
                f"{DEADLINE_HEADER} must be a number of milliseconds", param=DEADLINE_HEADER
            ) from None
        if not value > 0:
            raise InvalidRequest(f"{DEADLINE_HEADER} must be positive", param=DEADLINE_HEADER)
        asked.append(value)
    for value in asked:
        if value > limit:
            raise InvalidRequest(
                f"a deadline of {value:g} ms is looser than the server's maximum of {limit:g} ms",
                param="deadline_ms",
            )
    return Deadline(min(asked, default=limit), reserve_ms=service.settings.budget.reply_reserve_ms)


def request_faults(request: Request, service: Service) -> FaultDelays | None:
    """Test-only added delays (RAG_FAULTS__ENABLED); the header is ignored otherwise."""
    header = request.headers.get(FAULT_HEADER)
    if header is None or not service.settings.faults.enabled:
        return None
    return FaultDelays.parse(header)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, Overloaded):
        return "rejected"
    return "error"


def answer_body(answer: Answer) -> dict[str, Any]:
    ctx = answer.context
    return {
        "request_id": answer.request_id,
        "answer": answer.text,
        "finish_reason": answer.finish_reason,
        "sources": [source(h) for h in ctx.hits],
        "retrieval": retrieval_body(answer.retrieval),
        "timings_ms": answer.timings_ms,
        "degraded": answer.degraded,
        "degraded_reason": answer.degraded_reason,
        "usage": {
            "prompt_tokens": answer.usage.prompt_tokens,
            "completion_tokens": answer.usage.completion_tokens,
            "context_tokens": answer.usage.context_tokens,
        },
        "context": {
            "budget": ctx.budget,
            "tokens": ctx.tokens,
            "dropped": [h.passage.id for h in ctx.dropped],
        },
    }


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it may still be loading)."""
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(request: Request) -> OrjsonResponse:
    """200 once every stage is loaded, warmed up and answered fresh questions within its budget; 503
    with the reason before, on failure, or when the budgets cannot be met here (``over_budget``).
    Also: the machine, the dtypes chosen and why, the budgets, and what the budget check measured."""
    service = _service(request)
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
    return Response(_service(request).metrics.render(), media_type=METRICS_CONTENT_TYPE)


@router.post("/v1/search")
async def search(body: SearchBody, request: Request) -> OrjsonResponse:
    service = _service(request)
    deadline = request_deadline(request, body.deadline_ms, service)
    pipeline = service.pipeline
    settings = service.settings
    top_k = body.top_k or settings.retriever.top_k
    _check_limit("top_k", top_k, settings.retriever.max_top_k)
    _check_text("query", body.query, service)
    faults = request_faults(request, service)
    try:
        ticket = await service.admission.admit(deadline.at)
        try:
            result = await pipeline.search(body.query, top_k, deadline, faults, body.mode)
        finally:
            ticket.release()
    except RagError as exc:
        service.metrics.request_done("search", _outcome(exc))
        raise
    service.metrics.request_done("search", "ok")
    return OrjsonResponse(
        {
            "hits": [source(h) for h in result.hits],
            "retrieval": retrieval_body(result.retrieval),
            "timings_ms": result.timings_ms,
        },
        headers={"Server-Timing": server_timing(result.timings_ms)},
    )


@router.post("/v1/ask", response_model=None)
async def ask(body: AskBody, request: Request) -> Response:
    service = _service(request)
    deadline = request_deadline(request, body.deadline_ms, service)
    pipeline = service.pipeline
    settings = service.settings
    top_k = body.top_k or settings.retriever.top_k
    max_tokens = body.max_tokens or settings.generator.max_tokens
    _check_limit("top_k", top_k, settings.retriever.max_top_k)
    _check_limit("max_tokens", max_tokens, settings.generator.max_tokens_limit)
    _check_text("question", body.question, service)
    temperature = settings.generator.temperature if body.temperature is None else body.temperature
    stop = settings.generator.stop if body.stop is None else body.stop
    req = pipeline.new_request(
        body.question,
        top_k=top_k,
        max_tokens=max_tokens,
        temperature=temperature,
        stop=stop,
        deadline=deadline,
        faults=request_faults(request, service),
        mode=body.mode,
    )
    try:
        ticket = await service.admission.admit(deadline.at)  # before any work; 429 when refused
    except Overloaded:
        service.metrics.request_done("ask", "rejected")
        raise
    if body.stream:
        return TicketedStream(
            ticket,
            _sse(service, pipeline, req, ticket),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": req.request_id},
        )
    answer = await answer_once(service, "ask", request, pipeline, req, ticket)
    return OrjsonResponse(
        answer_body(answer),
        headers={"Server-Timing": server_timing(answer.timings_ms), "X-Request-Id": answer.request_id},
    )


async def answer_once(
    service: Service, route: str, request: Request, pipeline: Pipeline, req: AskRequest, ticket: Ticket
) -> Answer:
    """A non-streamed answer for an admitted request: cancelled (and aborted in vLLM) if the client
    hangs up, its admission slot freed however it ends, and its outcome counted under ``route``."""
    try:
        answer = await cancel_on_disconnect(request, pipeline.ask(req))
    except RagError as exc:
        service.metrics.request_done(route, _outcome(exc))
        raise
    except asyncio.CancelledError:
        service.metrics.request_done(route, "disconnected")
        raise
    finally:
        ticket.release()
    service.metrics.request_done(route, "degraded" if answer.degraded else "ok")
    return answer


class TicketedStream(StreamingResponse):
    """A streamed answer that holds its admission slot until the response is over, whichever way it
    ends (even if the client left before the body generator ever started)."""

    def __init__(self, ticket: Ticket, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._ticket.release()


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``, cancelling it if the client hangs up first: for a non-streamed answer nobody
    would read, the cancellation reaches the generator, which aborts the request in vLLM."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        # The body has been read, so the next message is the disconnect (or never comes).
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _sse(service: Service, pipeline: Pipeline, req: AskRequest, ticket: Ticket) -> AsyncIterator[bytes]:
    """``delta`` events with answer text, one ``done`` event with sources, timings, usage and the
    degraded flag (or an ``error`` event), then ``data: [DONE]``. If the client goes away, Starlette
    cancels this generator and closing the pipeline's stream aborts the generation in vLLM."""
    events = pipeline.ask_stream(req)
    outcome = "error"
    async with aclosing(events):
        try:
            async for item in events:
                if isinstance(item, str):
                    yield _event({"type": "delta", "text": item})
                else:
                    outcome = "degraded" if item.degraded else "ok"
                    ticket.release()  # the work is done: free the slot before the last bytes go out
                    yield _event({"type": "done", **answer_body(item)})
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "disconnected"  # the client went away; the generation was aborted
            raise
        except RagError as exc:
            yield _event({"type": "error", **error_body(exc.message, exc.type, exc.code, exc.param)})
        except Exception:
            log.exception("stream %s failed", req.request_id)
            yield _event(
                {"type": "error", **error_body("internal server error", "internal_error", "internal_error")}
            )
        finally:
            service.metrics.request_done("ask", outcome)
    yield b"data: [DONE]\n\n"
