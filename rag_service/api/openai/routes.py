"""The OpenAI-compatible API's routes: ``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``, ``/v1/models``.

Shapes follow OpenAI's exactly, so chat frontends and the official clients work with only a base URL
change. A completion runs the same pipeline as ``/v1/ask`` through the same serving path
(``rag_service/api/serving.py``); the RAG extras (``sources``, ``timings_ms``, ``context``,
``degraded``) are additional fields that strict clients ignore, on the response and on the streamed
chunk that carries ``finish_reason``. Every route needs the API key when ``RAG_API_KEY`` is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from rag_service.api.auth import require_api_key
from rag_service.api.bodies import server_timing
from rag_service.api.openai import serving_chat, serving_completions
from rag_service.api.openai.models import chat_model, check_model, embedding_model, model_card, served_models
from rag_service.api.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from rag_service.api.openai.serving_common import response_head
from rag_service.api.openai.serving_embeddings import embed_all, embeddings_body, input_texts, token_counts
from rag_service.api.openapi import ADMITTED, BODY, errors, event_stream
from rag_service.api.params import read_your_writes, request_deadline, request_pipeline, service_of
from rag_service.api.responses import OrjsonResponse
from rag_service.api.serving import (
    StreamFormat,
    admit,
    answer_once,
    run_admitted,
    sse_response,
    stream_answer,
)
from rag_service.config import Settings
from rag_service.errors import ModelNotFound
from rag_service.pipeline.budgets import Deadline
from rag_service.pipeline.pipeline import Answer, AnswerRequest, Pipeline

router = APIRouter(
    prefix="/v1", dependencies=[Depends(require_api_key), Depends(read_your_writes)], responses=errors(401)
)


@router.get("/models")
async def list_models(request: Request) -> OrjsonResponse:
    settings = service_of(request).settings
    models = [model_card(served) for served, _ in served_models(settings)]
    return OrjsonResponse({"object": "list", "data": models})


@router.get("/models/{model_id:path}", responses=errors(404))
async def retrieve_model(model_id: str, request: Request) -> OrjsonResponse:
    for served, configured in served_models(service_of(request).settings):
        if model_id in (served, configured):
            return OrjsonResponse(model_card(served))
    raise ModelNotFound(f"The model `{model_id}` does not exist", param="model")


@router.post("/embeddings", responses=errors(BODY, ADMITTED, 404))
async def embeddings(body: EmbeddingRequest, request: Request) -> OrjsonResponse:
    service = service_of(request)
    model = check_model(body.model, embedding_model(service.settings), service.settings.encoder.model)
    deadline = request_deadline(request, None, service)
    pipeline = request_pipeline(request, service)
    texts = input_texts(body, pipeline.encoder)
    # Counting is the tokenizer only (the encoder runs on the batcher's thread): off the event loop.
    counts = await asyncio.to_thread(token_counts, pipeline.encoder, texts)
    ticket = await admit(service, "embeddings", deadline)
    vectors = await run_admitted(service, "embeddings", request, ticket, embed_all(pipeline, texts))
    return OrjsonResponse(embeddings_body(vectors, counts, model, body.encoding_format))


@router.post(
    "/chat/completions",
    response_model=None,
    responses={
        **event_stream("The completion, or its chunks with `stream`."),
        **errors(BODY, ADMITTED, 404, 502),
    },
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    def prepare(pipeline: Pipeline, settings: Settings, deadline: Deadline) -> Prepared:
        req, plan = serving_chat.chat_request(body, pipeline, settings, deadline)
        return Prepared(
            req,
            serving_chat.ID_PREFIX,
            lambda head, include_usage: serving_chat.chat_stream(head, plan, include_usage),
            lambda head, answer: serving_chat.chat_completion(head, answer, plan),
        )

    return await _complete(request, "chat", body, prepare)


@router.post(
    "/completions",
    response_model=None,
    responses={
        **event_stream("The completion, or its chunks with `stream`."),
        **errors(BODY, ADMITTED, 404, 502),
    },
)
async def completions(body: CompletionRequest, request: Request) -> Response:
    def prepare(pipeline: Pipeline, settings: Settings, deadline: Deadline) -> Prepared:
        return Prepared(
            serving_completions.completion_request(body, pipeline, settings, deadline),
            serving_completions.ID_PREFIX,
            serving_completions.completion_stream,
            serving_completions.text_completion,
        )

    return await _complete(request, "completions", body, prepare)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A completion request planned, and how its answer looks (streamed or not)."""

    req: AnswerRequest
    id_prefix: str
    stream_format: Callable[[dict[str, Any], bool], StreamFormat]
    body: Callable[[dict[str, Any], Answer], dict[str, Any]]


async def _complete(
    request: Request,
    route: str,
    body: ChatCompletionRequest | CompletionRequest,
    prepare: Callable[[Pipeline, Settings, Deadline], Prepared],
) -> Response:
    """Chat and text completions alike: model check, deadline at arrival, planning off the event loop
    (tokenizing), admission before generation, then the answer streamed or whole."""
    service = service_of(request)
    settings = service.settings
    model = check_model(body.model, chat_model(settings), settings.generator.model)
    deadline = request_deadline(request, None, service)  # fixed at arrival, before any work
    pipeline = request_pipeline(request, service)
    prepared = await asyncio.to_thread(prepare, pipeline, settings, deadline)
    req = prepared.req
    ticket = await admit(service, route, deadline)  # before generation; 429 when refused
    head = response_head(prepared.id_prefix, req, model)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        fmt = prepared.stream_format(head, include_usage)
        frames = stream_answer(service.metrics, route, pipeline, req, ticket, fmt)
        return sse_response(ticket, frames, req.request_id)
    answer = await answer_once(service, route, request, pipeline, req, ticket)
    return OrjsonResponse(
        prepared.body(head, answer),
        headers={"Server-Timing": server_timing(answer.timings_ms), "X-Request-Id": req.request_id},
    )
