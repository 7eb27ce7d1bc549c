"""Single flight: while one request generates an answer, identical requests wait for it instead of
generating it again.

The first request of a key *leads*: it generates and then ``land``s its result (the answer to reuse,
or None when it had none: cut by a budget, aborted, failed). Requests arriving meanwhile *follow*:
they await the leader's future (shielded, so a follower that gives up does not cancel it). A
follower whose leader landed nothing generates itself. Followers get the whole answer at once when
the leader finishes rather than the leader's deltas as they come: relaying a stream to several
clients would tie each follower to a leader whose client may hang up (which aborts the generation),
and the leader's head start means the whole answer still arrives before a fresh generation of its
own would finish.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Flights(Generic[K, V]):
    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V | None]] = {}

    def __len__(self) -> int:
        return len(self._running)

    def lead_or_follow(self, key: K) -> asyncio.Future[V | None] | None:
        """None: the caller now leads ``key`` and must ``land`` it; else the leader's future to await."""
        running = self._running.get(key)
        if running is not None:
            return running
        self._running[key] = asyncio.get_running_loop().create_future()
        return None

    def land(self, key: K, result: V | None) -> None:
        """The leader is done (``result`` None: nothing to share); its followers wake up."""
        running = self._running.pop(key, None)
        if running is not None and not running.done():
            running.set_result(result)


async def follow(running: asyncio.Future[V | None]) -> V | None:
    """The leader's result, waited for without cancelling the leader's future when this wait is."""
    return await asyncio.shield(running)
