"""``/v1/embeddings``: inputs checked and counted, then embedded by the query micro-batcher (the one
encoder thread of ``rag_service/embedding/query_batcher.py``) after admission, like every other request."""

from __future__ import annotations

import asyncio
import base64
from functools import lru_cache
from typing import Any

import numpy as np

from rag_service.api.openai.protocol import EmbeddingRequest
from rag_service.embedding.encoder import Encoder
from rag_service.errors import InvalidRequest
from rag_service.pipeline.pipeline import Pipeline

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit on inputs per request


@lru_cache(maxsize=2)
def _token_counter(encoder: Encoder) -> Any:
    """A private copy of the encoder's tokenizer, without truncation, for counting. Calling the shared
    one without truncation would switch its truncation off while another thread encodes with it."""
    from tokenizers import Tokenizer

    counter = Tokenizer.from_str(encoder.tokenizer.backend_tokenizer.to_str())
    counter.no_truncation()
    counter.no_padding()
    return counter


def input_texts(body: EmbeddingRequest, encoder: Encoder) -> list[str]:
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
    return strings


def token_counts(encoder: Encoder, texts: list[str]) -> list[int]:
    """Each input's token count; an input longer than the encoder reads is refused (it would be cut
    silently otherwise)."""
    counts = [len(e.ids) for e in _token_counter(encoder).encode_batch(texts, add_special_tokens=True)]
    limit = encoder.max_seq_length
    for i, count in enumerate(counts):
        if limit and count > limit:
            raise InvalidRequest(
                f"input[{i}] is {count} tokens long; the embedding model reads at most {limit}",
                code="context_length_exceeded",
                param="input",
            )
    return counts


async def embed_all(pipeline: Pipeline, texts: list[str]) -> list[np.ndarray]:
    """Every input through the micro-batcher: they share batches with each other and with queries.
    No deadline drops them (a request of many inputs takes what it takes); admission bounds the wait."""
    return list(await asyncio.gather(*(pipeline.embedder.embed(t) for t in texts)))


def embeddings_body(
    vectors: list[np.ndarray], counts: list[int], model: str, encoding_format: str | None
) -> dict[str, Any]:
    as_base64 = encoding_format == "base64"
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
    return {"object": "list", "data": data, "model": model, "usage": usage}
