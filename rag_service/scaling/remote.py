"""A Serve ingress replica's two remote parts, behind the interfaces the single process uses:
``RemoteGenerator`` (the ``Generator`` protocol over the generator deployment's handle) and
``ReplicaIndex`` (``IndexAccess`` over a private copy that follows the writer deployment); and
``coalesced``, which the generator deployment streams through so tokens cross the handle in fewer messages.

Handles are duck-typed (``.method.remote(...)``), so nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from rag_service.config import Settings
from rag_service.domain import Document, GenerationChunk, Sampling
from rag_service.errors import GenerationFailed, RagError
from rag_service.index.follower import Follower
from rag_service.index.snapshot import IndexSpec
from rag_service.storage.replication import ChangeBatch
from rag_service.storage.store import WriteResult

log = logging.getLogger(__name__)


def our_error(exc: BaseException) -> RagError | None:
    """The service's own error behind a Ray task error (it carries the remote exception as ``cause``)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, RagError) else exc if isinstance(exc, RagError) else None


async def coalesced(
    chunks: AsyncGenerator[GenerationChunk, None], interval_s: float
) -> AsyncGenerator[GenerationChunk, None]:
    """``chunks`` with the pieces that arrive within ``interval_s`` of the last one sent merged into one:
    every streamed message through a Serve handle costs CPU on both sides, which a 2-core machine takes
    from the engine (ray.serve.llm batches its stream the same way). The first piece and the last go
    at once; one is held at most until the next arrives, so slow tokens are never delayed. Closing this
    stream closes ``chunks`` (the deployment's vLLM request is then aborted)."""
    held: GenerationChunk | None = None
    sent_at = float("-inf")
    loop = asyncio.get_running_loop()
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if held is not None:  # counts are cumulative: the newest piece's are the merged piece's
                chunk = GenerationChunk(
                    held.text + chunk.text, chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens
                )
            now = loop.time()
            if chunk.finish_reason is not None or now - sent_at >= interval_s:
                held, sent_at = None, now
                yield chunk
            else:
                held = chunk
        if held is not None:
            yield held


class RemoteGenerator:
    """Streams tokens from the generator deployment. A stream closed before its last chunk (client gone,
    deadline) cancels the remote call; the deployment's own ``VllmGenerator.stream`` then aborts the
    request in vLLM, exactly as in one process."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._open = 0

    async def stream(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        temperature: float,
        stop: list[str],
        request_id: str,
        sampling: Sampling | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        response = self._handle.options(stream=True).stream.remote(
            prompt_ids,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            request_id=request_id,
            sampling=sampling,
        )
        finished = False
        self._open += 1
        try:
            while True:
                try:
                    chunk: GenerationChunk = await anext(response)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    ours = our_error(exc)
                    raise ours or GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}") from exc
                finished = chunk.finish_reason is not None
                yield chunk
        finally:
            self._open -= 1
            if not finished:
                response.cancel()  # reaches the deployment as a cancellation: vLLM aborts the request

    async def reset_prefix_cache(self) -> None:
        await self._handle.reset_prefix_cache.remote()

    @property
    def unfinished_requests(self) -> int:
        """Streams this replica has open (the engine's own count is the deployment's metric)."""
        return self._open

    @property
    def healthy(self) -> bool:
        # The generator deployment's health check restarts a dead engine; an ingress stays up meanwhile.
        return True

    def shutdown(self) -> None:
        """The deployment owns the engine: nothing to stop here."""


class HandleSource:
    """The writer's handle as a ``ChangeSource``: blocking calls, made from the follower's thread."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def bundle(self) -> bytes:
        data: bytes = self._handle.bundle.remote().result()
        return data

    def changes_since(self, seq: int) -> ChangeBatch:
        batch: ChangeBatch = self._handle.changes_since.remote(seq).result()
        return batch


class ReplicaIndex:
    """A private copy of the writer's index in a temporary folder; writes go to the writer, and return
    once this replica has applied them (the next search here sees them, as in one process)."""

    def __init__(self, follower: Follower, writer: Any, folder: Path, wait_s: float) -> None:
        self.follower = follower
        self.live = follower.live
        self._writer = writer
        self._folder = folder
        self._wait_s = wait_s

    @classmethod
    def open(cls, settings: Settings, spec: IndexSpec, writer: Any) -> ReplicaIndex:
        """Blocking: downloads the writer's bundle (the service calls it from a worker thread)."""
        folder = Path(tempfile.mkdtemp(prefix="rag-replica-"))
        follower = Follower.start(
            folder, spec, settings.index, HandleSource(writer), nice=settings.ingest.nice
        )
        return cls(follower, writer, folder, settings.index.min_seq_wait_ms / 1000)

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self._writer, method).remote(*args)
        except Exception as exc:
            ours = our_error(exc)
            if ours is None:
                raise
            raise ours from exc

    async def upsert(self, docs: Sequence[Document]) -> WriteResult:
        result: WriteResult = await self._call("upsert", list(docs))
        await self.wait_for(result.seq, self._wait_s)
        return result

    async def delete(self, doc_id: str) -> WriteResult:
        result: WriteResult = await self._call("delete", doc_id)
        await self.wait_for(result.seq, self._wait_s)
        return result

    async def wait_for(self, seq: int, timeout_s: float) -> bool:
        if self.follower.applied_seq >= seq:
            return True
        return await asyncio.to_thread(self.follower.wait_for, seq, timeout_s)

    def describe(self) -> dict[str, object]:
        return {"role": "replica", **self.follower.stats()}

    def close(self) -> None:
        self.follower.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._folder)
