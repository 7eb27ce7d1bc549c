"""Reciprocal-rank fusion: several ranked lists of ids -> one list, each id scored by sum(1 / (k + rank)).

RRF (Cormack, Clarke & Buettcher, SIGIR 2009) needs no score calibration between retrievers, which is
why it suits fusing BM25 (unbounded, query-dependent scores) with cosine similarity. k=60 is the
paper's constant; on the shared SciFact claims it took dense 0.6586 and FTS5 BM25 0.6996 nDCG@10 to
0.7351 (PLATFORM.md).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

RRF_K = 60


@dataclass(slots=True)
class Fused(Generic[K]):
    """One fused result: its RRF score and its 1-based rank in each list that had it."""

    id: K
    score: float
    ranks: dict[str, int] = field(default_factory=dict)


def reciprocal_rank_fusion(rankings: Mapping[str, Sequence[K]], *, k: int = RRF_K) -> list[Fused[K]]:
    """Fuse ``{retriever name: ids best first}``; ties go to the better best rank, then the first list."""
    if k < 0:
        raise ValueError("k must be >= 0")
    fused: dict[K, Fused[K]] = {}
    for name, ids in rankings.items():
        for rank, id_ in enumerate(ids, start=1):
            entry = fused.get(id_)
            if entry is None:
                entry = fused[id_] = Fused(id_, 0.0)
            if name in entry.ranks:  # a list that repeats an id counts it once, at its best rank
                continue
            entry.ranks[name] = rank
            entry.score += 1.0 / (k + rank)
    order = {id_: i for i, id_ in enumerate(fused)}  # first appearance, for a stable final tie-break
    return sorted(fused.values(), key=lambda f: (-f.score, min(f.ranks.values()), order[f.id]))
