"""The prompt-exact answer cache: a bounded LRU of finished answers, keyed by exactly what decides the
generated text.

The key is a SHA-256 over the model, the packed prompt's token ids and every sampling parameter that
can change the output (max_tokens, temperature, stop strings, top_p, seed, penalties, min_tokens).
The prompt holds the retrieved passages' text, so a write that changes a question's passages (an
upsert, a delete) changes its prompt and misses: an entry can never be served for passages that are
gone; it just ages out of the LRU. Only deterministic answers are keyed at all: temperature 0
(greedy) or a fixed seed, the two cases where asking again is meant to give the same answer. Which
answers are complete enough to keep is the caller's rule (``Pipeline``: finish_reason stop or
length, never one cut by a budget, aborted or failed).

Bounded twice, in entries and in bytes, and the bytes count what an entry really holds: the text,
the key and a fixed allowance for the Python objects around them (``ENTRY_OVERHEAD``, checked
against tracemalloc in tests/unit/test_answer_cache.py), so ``max_bytes`` bounds the memory used.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from rag_service.domain import Sampling

# Bytes per entry beyond its text and key: the CachedAnswer object, its int, the entry's tuple, the
# OrderedDict's node and slots. Measured with tracemalloc on CPython 3.11: about 250 bytes, plus up
# to about 150 for the hash table's spare slots after evictions; tests check the bound holds.
ENTRY_OVERHEAD = 448


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """What generation produced: the text as streamed (before the answer's strip), how it ended, and
    how many tokens it took (reported again as usage, so a hit bills what the answer cost)."""

    text: str
    finish_reason: str
    completion_tokens: int


def is_deterministic(temperature: float, sampling: Sampling | None) -> bool:
    """Greedy decoding, or sampling with a fixed seed: the same request is meant to get the same answer."""
    return temperature == 0 or (sampling is not None and sampling.seed is not None)


def answer_key(
    model: str,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int,
    temperature: float,
    stop: Sequence[str],
    sampling: Sampling | None,
) -> bytes | None:
    """The cache key of a generation, or None when it is not deterministic (nothing to reuse)."""
    if not is_deterministic(temperature, sampling):
        return None
    s = sampling or Sampling()
    # repr of str, int, float and None is exact and stable: the parameters as text, in a fixed order.
    params = (model, max_tokens, temperature, tuple(stop), s.top_p, s.seed)
    penalties = (s.presence_penalty, s.frequency_penalty, s.min_tokens)
    digest = hashlib.sha256(repr((params, penalties)).encode())
    digest.update(array("q", prompt_ids).tobytes())  # 8 bytes per id: no two prompts share bytes
    return digest.digest()


def entry_bytes(key: bytes, answer: CachedAnswer) -> int:
    return sys.getsizeof(key) + sys.getsizeof(answer.text) + ENTRY_OVERHEAD


class AnswerCache:
    """An LRU of ``CachedAnswer`` by key, within ``max_entries`` and ``max_bytes``. Not thread-safe:
    it is used from the event loop only."""

    def __init__(self, *, max_entries: int, max_bytes: int, model: str) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.model = model  # part of every key (the generator and its dtype)
        self._entries: OrderedDict[bytes, tuple[CachedAnswer, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> CachedAnswer | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: bytes, answer: CachedAnswer) -> int:
        """Keeps ``answer`` (unless it alone is over ``max_bytes``); returns how many entries were
        evicted to make room."""
        size = entry_bytes(key, answer)
        if size > self.max_bytes:
            return 0
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (answer, size)
        self.bytes += size
        evicted = 0
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
            evicted += 1
        return evicted
