"""Dynamic micro-batching of query embeddings: concurrent questions share one encoder forward pass.

One worker task drains a queue: it takes what is waiting (up to ``max_batch_size``), lets the first
question wait up to ``max_wait_ms`` for company when the batch is not full, drops every question whose
deadline has passed (it would be encoded for nobody), and encodes the rest in one call on a single
dedicated thread. Encoding one at a time on that same thread is the "off" mode (``max_batch_size=1``),
so on and off use the same threads and can be compared fairly (benchmarks/query_batching.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rag_service.errors import DeadlineExceeded

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], np.ndarray]


@dataclass(slots=True)
class _Query:
    text: str
    deadline: float | None  # time.monotonic() after which nobody waits for this vector
    future: asyncio.Future[np.ndarray]


class QueryBatcher:
    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self._encode = encode
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._queue: asyncio.Queue[_Query] = asyncio.Queue()
        # One thread: batches never run concurrently and compete for the cores only with vLLM.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-encoder")
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def embed(self, text: str, deadline: float | None = None) -> np.ndarray:
        """The normalized vector of ``text``; raises ``DeadlineExceeded`` (stage embed) if the
        deadline passes before its batch is encoded."""
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="query-batcher")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Query(text, deadline, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            self._take_waiting(batch)
            if len(batch) < self.max_batch_size and self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)
                self._take_waiting(batch)
            live = self._drop_expired(batch)
            if not live:
                continue
            try:
                vectors = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._encode, [q.text for q in live]
                )
            except Exception as exc:  # the encoder failed: every caller of this batch gets the error
                for q in live:
                    if not q.future.done():
                        q.future.set_exception(exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(live))
            for q, vector in zip(live, vectors, strict=True):
                if not q.future.done():
                    q.future.set_result(vector)

    def _take_waiting(self, batch: list[_Query]) -> None:
        while len(batch) < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    def _drop_expired(self, batch: list[_Query]) -> list[_Query]:
        now = time.monotonic()
        live = []
        for q in batch:
            if q.future.done():  # the caller gave up (its stage timed out or it was cancelled)
                self._dropped()
            elif q.deadline is not None and q.deadline <= now:
                self._dropped()
                q.future.set_exception(
                    DeadlineExceeded(
                        "the question's deadline passed while it waited in the embedding queue",
                        stage="embed",
                    )
                )
            else:
                live.append(q)
        return live

    def _dropped(self) -> None:
        if self._on_drop is not None:
            self._on_drop()

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=False, cancel_futures=True)
