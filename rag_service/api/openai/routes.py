"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``.

Shapes follow OpenAI's exactly, so chat frontends and the official clients work with only a base URL
change. A chat completion runs the same pipeline as ``/v1/ask`` (retrieval on the conversation, see
``rag_service.prompting.plans``); the RAG extras (``sources``, ``timings_ms``, ``context``, ``degraded``) are
additional fields that strict clients ignore, on the response and on the streamed chunk that carries
``finish_reason``. Every route needs the API key when ``RAG_API_KEY`` is set.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from rag_service.api.auth import require_api_key
from rag_service.api.errors import error_body
from rag_service.api.native.routes import (
    TicketedStream,
    answer_once,
    request_deadline,
    request_faults,
    retrieval_body,
    server_timing,
    source,
)
from rag_service.api.openai.protocol import ChatCompletionRequest, ChatMessage, EmbeddingRequest
from rag_service.api.responses import OrjsonResponse
from rag_service.config import Settings
from rag_service.domain import Sampling
from rag_service.embedding.encoder import Encoder
from rag_service.errors import InvalidRequest, ModelNotFound, Overloaded, RagError
from rag_service.pipeline.pipeline import BUDGET_FINISH_REASON, Answer, AskRequest, Deadline, Pipeline
from rag_service.prompting.plans import ChatPlan, Message, Role, plan_chat
from rag_service.runtime.metrics import Metrics
from rag_service.runtime.service import Service
from rag_service.testing.faults import FaultDelays

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit on inputs per request
OWNER = "rag-service"
_STARTED = int(time.time())


# --- models ---------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _served_name(model: str) -> str:
    """A local checkpoint folder is served under its folder name, a hub id as itself."""
    return Path(model).name if Path(model).is_dir() else model


def chat_model(settings: Settings) -> str:
    return _served_name(settings.generator.model)


def embedding_model(settings: Settings) -> str:
    return _served_name(settings.encoder.model)


def _check_model(requested: str, served: str, configured: str) -> str:
    if requested not in (served, configured):
        raise ModelNotFound(
            f"The model `{requested}` does not exist: this endpoint serves `{served}` (see GET /v1/models)",
            param="model",
        )
    return served


def _model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": OWNER}


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


@router.get("/models")
async def list_models(request: Request) -> OrjsonResponse:
    settings = _service(request).settings
    models = [_model_card(chat_model(settings)), _model_card(embedding_model(settings))]
    return OrjsonResponse({"object": "list", "data": models})


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> OrjsonResponse:
    settings = _service(request).settings
    for served, configured in (
        (chat_model(settings), settings.generator.model),
        (embedding_model(settings), settings.encoder.model),
    ):
        if model_id in (served, configured):
            return OrjsonResponse(_model_card(served))
    raise ModelNotFound(f"The model `{model_id}` does not exist", param="model")


# --- embeddings -----------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _token_counter(encoder: Encoder) -> Any:
    """A private copy of the encoder's tokenizer, without truncation, for counting. Calling the shared
    one without truncation would switch its truncation off while another thread encodes with it."""
    from tokenizers import Tokenizer

    counter = Tokenizer.from_str(encoder.tokenizer.backend_tokenizer.to_str())
    counter.no_truncation()
    counter.no_padding()
    return counter


def _embed(encoder: Encoder, texts: list[str]) -> tuple[Any, list[int]]:
    """Vectors and each input's token count; an input longer than the encoder reads is refused
    (it would be cut silently otherwise)."""
    counts = [len(e.ids) for e in _token_counter(encoder).encode_batch(texts, add_special_tokens=True)]
    limit = encoder.max_seq_length
    for i, count in enumerate(counts):
        if limit and count > limit:
            raise InvalidRequest(
                f"input[{i}] is {count} tokens long; the embedding model reads at most {limit}",
                code="context_length_exceeded",
                param="input",
            )
    return encoder.encode_passages(texts), counts


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> OrjsonResponse:
    service = _service(request)
    model = _check_model(body.model, embedding_model(service.settings), service.settings.encoder.model)
    encoder = service.pipeline.encoder
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise InvalidRequest("input must not be empty", param="input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(f"at most {MAX_EMBEDDING_INPUTS} inputs per request", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(
            "token-id inputs are not supported: send text (the ids would be another tokenizer's)",
            code="unsupported_value",
            param="input",
        )
    strings = [str(t) for t in texts]
    if any(not t.strip() for t in strings):
        raise InvalidRequest("inputs must contain non-whitespace text", param="input")
    if body.dimensions is not None and body.dimensions != encoder.dimension:
        raise InvalidRequest(
            f"this model's embeddings have {encoder.dimension} dimensions; it cannot shorten them",
            code="unsupported_value",
            param="dimensions",
        )
    vectors, counts = await asyncio.to_thread(_embed, encoder, strings)
    as_base64 = body.encoding_format == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            # base64: the little-endian float32 bytes, what the official clients decode.
            "embedding": base64.b64encode(vector.astype("<f4").tobytes()).decode()
            if as_base64
            else vector.tolist(),
        }
        for i, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
    return OrjsonResponse({"object": "list", "data": data, "model": model, "usage": usage})


# --- chat completions -----------------------------------------------------------------------------


def _text(message: ChatMessage, i: int) -> str:
    content = message.content
    if content is None:
        raise InvalidRequest(f"messages[{i}].content is required", param=f"messages[{i}].content")
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"messages[{i}].content[{j}]: only text parts are supported, got {part.get('type')!r}",
                code="unsupported_value",
                param=f"messages[{i}].content",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _conversation(messages: list[ChatMessage]) -> list[Message]:
    conversation = []
    for i, m in enumerate(messages):
        if m.role in ("tool", "function"):
            raise InvalidRequest(
                f"messages[{i}]: {m.role} messages are not supported (no tools)",
                code="unsupported_value",
                param=f"messages[{i}].role",
            )
        if m.tool_calls or m.function_call is not None or m.audio is not None:
            raise InvalidRequest(
                f"messages[{i}]: tool calls and audio are not supported",
                code="unsupported_value",
                param=f"messages[{i}]",
            )
        # OpenAI's newer "developer" role is the system role of older models.
        role: Role = (
            "system" if m.role in ("system", "developer") else "user" if m.role == "user" else "assistant"
        )
        conversation.append(Message(role, _text(m, i)))
    return conversation


def _limit(name: str, value: int, limit: int) -> int:
    if value > limit:
        raise InvalidRequest(f"{name} must be at most {limit}, got {value}", param=name)
    return value


def _chat_request(
    body: ChatCompletionRequest,
    pipeline: Pipeline,
    settings: Settings,
    deadline: Deadline,
    faults: FaultDelays | None,
) -> tuple[AskRequest, ChatPlan]:
    """Validates the body against the live settings and fits the conversation (CPU work: tokenizing)."""
    refused = body.refused_parameter()
    if refused is not None:
        param, message = refused
        raise InvalidRequest(message, code="unsupported_parameter", param=param)
    rag = body.rag
    retrieve = rag is None or rag.retrieval
    gen = settings.generator
    max_tokens = body.max_completion_tokens or body.max_tokens or gen.max_tokens
    _limit(
        "max_completion_tokens" if body.max_completion_tokens else "max_tokens",
        max_tokens,
        gen.max_tokens_limit,
    )
    top_k = (rag.top_k if rag else None) or settings.retriever.top_k
    _limit("rag.top_k", top_k, settings.retriever.max_top_k)
    stop = gen.stop if body.stop is None else [body.stop] if isinstance(body.stop, str) else body.stop
    if len(stop) > 4 or any(not s or len(s) > 64 for s in stop):
        raise InvalidRequest("stop: at most 4 strings of 1 to 64 characters", param="stop")
    plan: ChatPlan = plan_chat(
        pipeline.prompts,
        _conversation(body.messages),
        system_prompt=gen.system_prompt,
        retrieve=retrieve,
        max_model_len=gen.max_model_len,
        max_tokens=max_tokens,
        context_tokens=settings.retriever.context_tokens,
        max_query_chars=settings.server.max_question_chars,
    )
    req = AskRequest(
        question=plan.query,
        question_ids=[],
        top_k=top_k,
        max_tokens=max_tokens,
        temperature=gen.temperature if body.temperature is None else body.temperature,
        stop=stop,
        context_budget=plan.context_budget,
        deadline=deadline,
        budgets=settings.budget,
        faults=faults,
        mode=(rag.mode if rag else None) or settings.retriever.mode,
        build_prompt=plan.build_prompt,
        retrieve=retrieve,
        sampling=Sampling(
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
        ),
    )
    return req, plan


def _finish_reason(answer: Answer) -> str:
    # vLLM says "stop" or "length"; an answer cut short by a budget is "length" (truncated) in
    # OpenAI's vocabulary, with `degraded_reason` naming the stage; "abort" never reaches a client
    # that is still listening.
    if answer.finish_reason == BUDGET_FINISH_REASON:
        return "length"
    return answer.finish_reason if answer.finish_reason in ("stop", "length") else "stop"


def _usage(answer: Answer) -> dict[str, int]:
    u = answer.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def rag_extras(answer: Answer, plan: ChatPlan) -> dict[str, Any]:
    """The RAG additions to OpenAI's shapes, the same figures as ``/v1/ask`` gives."""
    ctx = answer.context
    return {
        "sources": [source(h) for h in ctx.hits],
        "retrieval": retrieval_body(answer.retrieval),
        "timings_ms": answer.timings_ms,
        "context": {
            "budget": ctx.budget,
            "tokens": ctx.tokens,
            "dropped": [h.passage.id for h in ctx.dropped],
            "messages_dropped": plan.messages_dropped,
        },
        # Cut short by a budget: the answer so far (or only the sources) and the stage that ran late.
        "degraded": answer.degraded,
        "degraded_reason": answer.degraded_reason,
    }


def _completion_id(req: AskRequest) -> str:
    return "chatcmpl-" + req.request_id.removeprefix("rag-")


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    service = _service(request)
    settings = service.settings
    model = _check_model(body.model, chat_model(settings), settings.generator.model)
    deadline = request_deadline(request, None, service)  # fixed at arrival, before any work
    pipeline = service.pipeline
    req, plan = await asyncio.to_thread(
        _chat_request, body, pipeline, settings, deadline, request_faults(request, service)
    )
    try:
        ticket = await service.admission.admit(deadline.at)  # before generation; 429 when refused
    except Overloaded:
        service.metrics.request_done("chat", "rejected")
        raise
    created = int(time.time())
    head = {"id": _completion_id(req), "created": created, "model": model, "system_fingerprint": None}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return TicketedStream(
            ticket,
            _chunks(service.metrics, pipeline, req, plan, head, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": req.request_id},
        )
    answer = await answer_once(service, "chat", request, pipeline, req, ticket)
    completion = {
        **head,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(answer),
            }
        ],
        "usage": _usage(answer),
        **rag_extras(answer, plan),
    }
    return OrjsonResponse(
        completion,
        headers={"Server-Timing": server_timing(answer.timings_ms), "X-Request-Id": req.request_id},
    )


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _chunks(
    metrics: Metrics,
    pipeline: Pipeline,
    req: AskRequest,
    plan: ChatPlan,
    head: dict[str, Any],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` events: the role first, then content deltas, then ``finish_reason``
    with the RAG extras, then (``include_usage``) a chunk with ``usage`` and no choices, then
    ``data: [DONE]``. An error after the stream started is an ``{"error": {...}}`` event, as
    OpenAI sends it. If the client goes away Starlette cancels this generator, and closing the
    pipeline's stream aborts the generation in vLLM."""
    base = {**head, "object": "chat.completion.chunk"}
    if include_usage:
        base["usage"] = None  # OpenAI: every chunk has `usage`, null but on the last one

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": ""})
    events = pipeline.ask_stream(req)
    outcome = "error"
    async with aclosing(events):
        try:
            async for item in events:
                if isinstance(item, str):
                    yield chunk({"content": item})
                    continue
                outcome = "degraded" if item.degraded else "ok"
                yield chunk({}, _finish_reason(item), **rag_extras(item, plan))
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(item)})
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "disconnected"  # the client went away; the generation was aborted
            raise
        except RagError as exc:
            yield _sse(error_body(exc.message, exc.type, exc.code, exc.param))
        except Exception:
            log.exception("chat stream %s failed", req.request_id)
            yield _sse(error_body("internal server error", "internal_error", "internal_error"))
        finally:
            metrics.request_done("chat", outcome)
    yield b"data: [DONE]\n\n"
