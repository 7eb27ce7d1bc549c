"""Admission control on its own: bounded slots and queue, 429 decisions made at once, FIFO hand-over."""

from __future__ import annotations

import asyncio
import time

import pytest

from rag_service.errors import Overloaded
from rag_service.runtime.admission import AdmissionController


def _far() -> float:
    return time.monotonic() + 60


def test_full_queue_is_refused_at_once_with_retry_after() -> None:
    async def run() -> None:
        adm = AdmissionController(max_in_flight=2, max_queue=1)
        running = [await adm.admit(_far()), await adm.admit(_far())]
        queued = asyncio.create_task(adm.admit(_far()))
        await asyncio.sleep(0)
        assert (adm.in_flight, adm.queued) == (2, 1)
        with pytest.raises(Overloaded) as info:
            await adm.admit(_far())
        assert adm.queued == 1, "refused at once: it never joined the queue"
        assert info.value.status == 429 and info.value.retry_after_s >= 1
        running[0].release()  # hands its slot to the queued request
        ticket = await queued
        assert (adm.in_flight, adm.queued) == (2, 0)
        ticket.release()
        running[1].release()
        assert adm.in_flight == 0

    asyncio.run(run())


def test_slots_go_to_the_queue_in_order() -> None:
    async def run() -> list[int]:
        adm = AdmissionController(max_in_flight=1, max_queue=5)
        first = await adm.admit(_far())
        order: list[int] = []

        async def waiter(n: int) -> None:
            ticket = await adm.admit(_far())
            order.append(n)
            ticket.release()

        tasks = [asyncio.create_task(waiter(n)) for n in range(4)]
        await asyncio.sleep(0.01)
        first.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(run()) == [0, 1, 2, 3]


def test_observed_service_rate_refuses_what_cannot_start_in_time() -> None:
    async def run() -> None:
        adm = AdmissionController(max_in_flight=1, max_queue=10, max_queue_share=0.5)
        adm.observe(2.0)  # requests have been taking 2 s each
        busy = await adm.admit(_far())
        # Next in line would wait ~2 s; a request with a 1 s deadline may queue only 0.5 s: refused.
        with pytest.raises(Overloaded, match="expected wait") as info:
            await adm.admit(time.monotonic() + 1.0)
        assert info.value.retry_after_s == 2
        # With a 10 s deadline it may queue 5 s: admitted to the queue.
        queued = asyncio.create_task(adm.admit(time.monotonic() + 10))
        await asyncio.sleep(0)
        assert adm.queued == 1
        busy.release()
        (await queued).release()

    asyncio.run(run())


def test_a_request_leaves_the_queue_when_its_wait_share_is_spent() -> None:
    async def run() -> None:
        adm = AdmissionController(max_in_flight=1, max_queue=10, max_queue_share=0.5)
        busy = await adm.admit(_far())
        started = time.monotonic()
        with pytest.raises(Overloaded, match="no slot freed"):
            await adm.admit(time.monotonic() + 0.2)  # may wait 0.1 s
        assert 0.09 < time.monotonic() - started < 1.0
        assert adm.queued == 0
        busy.release()
        assert adm.in_flight == 0

    asyncio.run(run())


def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    async def run() -> None:
        adm = AdmissionController(max_in_flight=1, max_queue=10)
        busy = await adm.admit(_far())
        gone = asyncio.create_task(adm.admit(_far()))
        await asyncio.sleep(0)
        gone.cancel()  # the client went away while queued
        with pytest.raises(asyncio.CancelledError):
            await gone
        busy.release()
        assert (adm.in_flight, adm.queued) == (0, 0)

    asyncio.run(run())
