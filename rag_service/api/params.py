"""What every route reads from a request the same way: the service, the deadline, limits, stop strings,
and (test-only) the fault delays that wrap the pipeline's components for this one request."""

from __future__ import annotations

from fastapi import Request

from rag_service.errors import InvalidRequest, ReplicaBehind
from rag_service.pipeline.budgets import Deadline
from rag_service.pipeline.pipeline import Pipeline
from rag_service.runtime.service import Service
from rag_service.testing.faults import HEADER as FAULT_HEADER
from rag_service.testing.faults import FaultDelays, delayed

DEADLINE_HEADER = "x-deadline-ms"
MIN_SEQ_HEADER = "x-rag-min-seq"
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def read_your_writes(request: Request) -> None:
    """``X-Rag-Min-Seq: <seq>`` (the ``seq`` a write returned): answer only from an index that has applied
    it. One process always has its own writes; a Ray Serve replica pulls from the writer at once and
    waits up to ``RAG_INDEX__MIN_SEQ_WAIT_MS``, then answers 503 ``replica_behind``."""
    header = request.headers.get(MIN_SEQ_HEADER)
    service = service_of(request)
    if header is None or service.index is None:  # not ready: the route itself answers 503
        return
    try:
        seq = int(header)
    except ValueError:
        raise InvalidRequest(
            f"{MIN_SEQ_HEADER} must be an integer sequence number", param=MIN_SEQ_HEADER
        ) from None
    if seq < 0:
        raise InvalidRequest(f"{MIN_SEQ_HEADER} must not be negative", param=MIN_SEQ_HEADER)
    wait_s = service.settings.index.min_seq_wait_ms / 1000
    if not await service.index.wait_for(seq, wait_s):
        raise ReplicaBehind(
            f"this replica has applied writes up to seq {service.index.live.applied_seq}, not {seq}, "
            f"after waiting {wait_s:g} s; retry"
        )


def check_limit(name: str, value: int, limit: int) -> int:
    if value > limit:
        raise InvalidRequest(f"{name} must be at most {limit}, got {value}", param=name)
    return value


def check_text(name: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise InvalidRequest(f"{name} is {len(text)} characters long; the limit is {limit}", param=name)


def stop_strings(stop: str | list[str] | None, default: list[str]) -> list[str]:
    """The strings that end an answer: the server's default when absent, at most 4 of 1 to 64 characters."""
    strings = default if stop is None else [stop] if isinstance(stop, str) else stop
    if len(strings) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in strings):
        raise InvalidRequest(
            f"stop: at most {MAX_STOP_STRINGS} strings of 1 to {MAX_STOP_CHARS} characters", param="stop"
        )
    return strings


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


def request_pipeline(request: Request, service: Service) -> Pipeline:
    """The ready pipeline (``NotReady`` otherwise), its components wrapped with the request's test-only
    delays when ``RAG_FAULTS__ENABLED`` (the header is ignored otherwise)."""
    pipeline = service.pipeline
    header = request.headers.get(FAULT_HEADER)
    if header is None or not service.settings.faults.enabled:
        return pipeline
    return delayed(pipeline, FaultDelays.parse(header))
