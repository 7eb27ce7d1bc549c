"""Query vector -> scored passages -> the best of them packed under a context-token budget.

Packing is best-first; a passage that does not fit is skipped whole (never cut mid-way) and later,
shorter ones may still fit. The budget is in the generator's tokens; the prompt is assembled from the
same token ids that were counted, so the count is exact.
"""

from __future__ import annotations

import numpy as np

from rag_service.index import HnswIndex
from rag_service.prompt import PromptBuilder
from rag_service.store import PassageStore
from rag_service.types import Context, Hit


class Retriever:
    def __init__(self, index: HnswIndex, store: PassageStore, prompts: PromptBuilder) -> None:
        if index.ntotal != len(store):
            raise ValueError(f"index has {index.ntotal} vectors but the store {len(store)} passages")
        self.index = index
        self.store = store
        self.prompts = prompts

    def search(self, vector: np.ndarray, top_k: int) -> list[Hit]:
        scores, ids = self.index.search(vector.reshape(1, -1), top_k)
        return [
            Hit(self.store.get(int(i)), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0
        ]

    def pack(self, hits: list[Hit], budget: int) -> Context:
        packed: list[Hit] = []
        dropped: list[Hit] = []
        used = 0
        for hit in hits:
            cost = self.prompts.passage_tokens(len(packed) + 1, hit.passage)
            if packed:
                cost += self.prompts.separator_tokens
            if used + cost <= budget:
                packed.append(hit)
                used += cost
            else:
                dropped.append(hit)
        return Context(hits=packed, tokens=used, budget=budget, dropped=dropped)
