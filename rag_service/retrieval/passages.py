"""Query -> scored passages -> the best of them packed under a context-token budget.

Two retrievers over the same live passages: ``dense`` (the query vector in the HNSW graph) and
``lexical`` (the query text in the store's FTS5 index, BM25). ``fuse`` merges their lists with
reciprocal-rank fusion (``fusion.py``). Both only return passages the live index holds, so they agree
on what exists even while a batch committed by another process is not applied here yet. The pipeline
runs the two concurrently under the retrieve budget (``rag_service/pipeline/pipeline.py``).

Packing is best-first; a passage that does not fit is skipped whole (never cut mid-way) and later,
shorter ones may still fit. The budget is in the generator's tokens; the prompt is assembled from the
same token ids that were counted, so the count is exact.
"""

from __future__ import annotations

import numpy as np

from rag_service.config import RetrieverSettings
from rag_service.domain import Context, Hit
from rag_service.index.live import LiveIndex
from rag_service.prompting.prompt import PromptBuilder
from rag_service.retrieval.fusion import reciprocal_rank_fusion

DENSE = "dense"
LEXICAL = "lexical"


class PassageSearch:
    def __init__(
        self, index: LiveIndex, prompts: PromptBuilder, settings: RetrieverSettings | None = None
    ) -> None:
        self.index = index
        self.prompts = prompts
        self.settings = settings or RetrieverSettings()

    def candidates(self, top_k: int) -> int:
        """How many passages each retriever contributes to a hybrid search."""
        return max(top_k, self.settings.candidates)

    def search(self, vector: np.ndarray, top_k: int) -> list[Hit]:
        """The top_k live passages by the query vector (deleted and replaced chunks are filtered out
        by the index), each with its dense rank."""
        hits = self.index.search(vector, top_k)
        return [Hit(h.passage, h.score, {DENSE: rank}) for rank, h in enumerate(hits, start=1)]

    def search_text(self, text: str, top_k: int, *, until: float | None = None) -> list[Hit]:
        """The top_k live passages by BM25 over the query's words (any text is a valid query: see
        ``storage/lexical.py``); ``until`` (``time.monotonic()``) interrupts the query in SQLite once
        passed (``SearchInterrupted``)."""
        hits: list[Hit] = []
        for vector_id, score in self.index.store.text_search(text, top_k, until=until):
            passage = self.index.passage(vector_id)
            if passage is not None:  # committed but not applied to this live index yet: not live here
                hits.append(Hit(passage, score, {LEXICAL: len(hits) + 1}))
        return hits

    def fuse(self, dense: list[Hit], lexical: list[Hit], top_k: int) -> list[Hit]:
        """Reciprocal-rank fusion of the two lists; the score is the fused one, ``retrievers`` holds
        the passage's rank in each list that had it."""
        by_id = {h.passage.id: h.passage for h in [*dense, *lexical]}
        fused = reciprocal_rank_fusion(
            {DENSE: [h.passage.id for h in dense], LEXICAL: [h.passage.id for h in lexical]},
            k=self.settings.rrf_k,
        )
        return [Hit(by_id[f.id], f.score, dict(f.ranks)) for f in fused[:top_k]]

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
