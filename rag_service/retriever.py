"""Query vector -> scored passages -> the best of them packed under a context-token budget.

Packing is best-first; a passage that does not fit is skipped whole (never cut mid-way) and later,
shorter ones may still fit. The budget is in the generator's tokens; the prompt is assembled from the
same token ids that were counted, so the count is exact.
"""

from __future__ import annotations

import numpy as np

from rag_service.index import LiveIndex
from rag_service.prompt import PromptBuilder
from rag_service.types import Context, Hit


class Retriever:
    def __init__(self, index: LiveIndex, prompts: PromptBuilder) -> None:
        self.index = index
        self.prompts = prompts

    def search(self, vector: np.ndarray, top_k: int) -> list[Hit]:
        """The top_k live passages (deleted and replaced chunks are filtered out by the index)."""
        return self.index.search(vector, top_k)

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
