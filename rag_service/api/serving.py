"""The one serving path of every answering route (``/v1/ask``, ``/v1/chat/completions``,
``/v1/completions``) and of ``/v1/search`` and ``/v1/embeddings``: admission, the ticket, disconnect
handling, the outcome metric, SSE framing and mid-stream errors. The routes only say how their answer
looks (a ``StreamFormat`` for streams, a body for the rest).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from typing import Any, Protocol, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from rag_service.api.errors import error_payload
from rag_service.errors import Overloaded, RagError
from rag_service.pipeline.budgets import Deadline
from rag_service.pipeline.pipeline import Answer, AnswerRequest, Pipeline
from rag_service.runtime.admission import Ticket
from rag_service.runtime.metrics import Metrics
from rag_service.runtime.service import Service

log = logging.getLogger(__name__)
T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def outcome_of(exc: BaseException) -> str:
    return "rejected" if isinstance(exc, Overloaded) else "error"


def answered(answer: Answer) -> str:
    return "degraded" if answer.degraded else "ok"


async def admit(service: Service, route: str, deadline: Deadline) -> Ticket:
    """An admission slot before any work (``Overloaded``, a 429, counted under ``route``, when refused)."""
    try:
        return await service.admission.admit(deadline.at)
    except Overloaded:
        service.metrics.request_done(route, "rejected")
        raise


async def run_admitted(
    service: Service,
    route: str,
    request: Request,
    ticket: Ticket,
    work: Coroutine[Any, Any, T],
    outcome: Callable[[T], str] = lambda _: "ok",
) -> T:
    """Non-streamed work of an admitted request: cancelled (an answer is aborted in vLLM) if the
    client hangs up, its slot freed however it ends, and its outcome counted under ``route``."""
    try:
        result = await cancel_on_disconnect(request, work)
    except RagError as exc:
        service.metrics.request_done(route, outcome_of(exc))
        raise
    except asyncio.CancelledError:
        service.metrics.request_done(route, "disconnected")
        raise
    finally:
        ticket.release()
    service.metrics.request_done(route, outcome(result))
    return result


async def answer_once(
    service: Service, route: str, request: Request, pipeline: Pipeline, req: AnswerRequest, ticket: Ticket
) -> Answer:
    return await run_admitted(service, route, request, ticket, pipeline.ask(req), answered)


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


def event(payload: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying a JSON payload."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class StreamFormat(Protocol):
    """How one API frames a streamed answer; ``stream_answer`` drives it."""

    def opening(self) -> list[bytes]: ...
    def delta(self, text: str) -> bytes: ...
    def closing(self, answer: Answer) -> list[bytes]: ...
    def error(self, body: dict[str, Any]) -> bytes: ...


async def stream_answer(
    metrics: Metrics,
    route: str,
    pipeline: Pipeline,
    req: AnswerRequest,
    ticket: Ticket,
    fmt: StreamFormat,
) -> AsyncIterator[bytes]:
    """The opening frames, a frame per text delta, the closing frames (or one error frame: an error
    after the stream started cannot change the status any more), then ``data: [DONE]``. If the client
    goes away, Starlette cancels this generator, and closing the pipeline's stream aborts the
    generation in vLLM. The outcome is counted under ``route`` however it ends."""
    events = pipeline.ask_stream(req)
    outcome = "error"
    async with aclosing(events):
        try:
            for frame in fmt.opening():
                yield frame
            async for item in events:
                if isinstance(item, str):
                    yield fmt.delta(item)
                    continue
                outcome = answered(item)
                ticket.release()  # the work is done: free the slot before the last bytes go out
                for frame in fmt.closing(item):
                    yield frame
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "disconnected"  # the client went away; the generation was aborted
            raise
        except Exception as exc:
            if not isinstance(exc, RagError):
                log.exception("stream %s failed", req.request_id)
            yield fmt.error(error_payload(exc))
        finally:
            metrics.request_done(route, outcome)
    yield DONE


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


def sse_response(ticket: Ticket, frames: AsyncIterator[bytes], request_id: str) -> TicketedStream:
    return TicketedStream(
        ticket, frames, media_type="text/event-stream", headers={**SSE_HEADERS, "X-Request-Id": request_id}
    )
