"""Admission control: a bounded number of requests run, a bounded number wait, the rest get 429 at once.

Decided before any work is done. A request is refused (``Overloaded``, answered 429 with
``Retry-After``) when the queue is full, or when the observed service rate says it would wait longer
than its share of the deadline (``max_queue_share``) before it could even start. The rate comes from
Little's law: with ``max_in_flight`` slots and a mean service time S (an exponentially weighted
average of admitted requests' times), a slot frees every S / max_in_flight seconds on average.
A queued request whose allowed wait runs out leaves the queue with the same 429.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time

from rag_service.errors import Overloaded

EWMA_WEIGHT = 0.2  # weight of the newest service time: adapts within ~10 requests, smooths outliers


class Ticket:
    """An admission slot. ``release()`` (idempotent) frees it and records the service time."""

    def __init__(self, controller: AdmissionController) -> None:
        self._controller = controller
        self._started = time.monotonic()
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._controller._release(time.monotonic() - self._started)


class AdmissionController:
    def __init__(self, max_in_flight: int, max_queue: int, max_queue_share: float = 0.5) -> None:
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.max_queue_share = max_queue_share
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.service_time_s: float | None = None  # unknown until a request (or the warm-up) finished

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def observe(self, seconds: float) -> None:
        """Feed one service time into the average (also used by the warm-up to seed it)."""
        if self.service_time_s is None:
            self.service_time_s = seconds
        else:
            self.service_time_s += EWMA_WEIGHT * (seconds - self.service_time_s)

    def expected_wait_s(self, position: int) -> float:
        """Predicted wait of the ``position``-th request in line (1 = next) until a slot frees."""
        if self.service_time_s is None:
            return 0.0
        return position * self.service_time_s / self.max_in_flight

    def _retry_after(self) -> int:
        # Long enough for the current queue to drain by the observed rate; whole seconds (HTTP).
        return max(1, math.ceil(self.expected_wait_s(self.queued + 1)))

    async def admit(self, deadline: float) -> Ticket:
        """A slot for a request that must finish by ``deadline`` (``time.monotonic()``), or ``Overloaded``."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return Ticket(self)
        if self.queued >= self.max_queue:
            raise Overloaded(
                f"server busy: {self.in_flight} requests running and {self.queued} queued",
                retry_after_s=self._retry_after(),
            )
        allowed = (deadline - time.monotonic()) * self.max_queue_share
        expected = self.expected_wait_s(self.queued + 1)
        if expected > allowed:
            raise Overloaded(
                f"server busy: the expected wait of {expected * 1000:.0f} ms exceeds this request's "
                f"allowed queueing time of {max(allowed, 0) * 1000:.0f} ms",
                retry_after_s=self._retry_after(),
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(allowed, 0)):
                await waiter
        except BaseException as exc:  # timed out, or the client went away while queued
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._release(None)  # a slot was handed over just as we gave up: pass it on
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    "server busy: no slot freed within this request's allowed queueing time",
                    retry_after_s=self._retry_after(),
                ) from None
            raise
        return Ticket(self)  # the slot was handed over by _release: in_flight already counts it

    def _release(self, seconds: float | None) -> None:
        if seconds is not None:
            self.observe(seconds)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over directly: no newcomer can jump the queue
                return
        self.in_flight -= 1
