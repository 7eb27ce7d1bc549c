"""Context packing under a token budget counted with the generator's tokenizer."""

from __future__ import annotations

import pytest

from rag_service.config import Settings
from rag_service.domain import Hit, Passage
from rag_service.embedding.encoder import Encoder
from rag_service.prompting.prompt import PromptBuilder
from rag_service.retrieval.passages import PassageSearch
from tests.support.inspection import context_text


def _hits(passages: PassageSearch, encoder: Encoder, question: str, k: int) -> list[Hit]:
    return passages.search(encoder.encode_queries([question])[0], k)


def test_search_returns_ranked_hits(passages: PassageSearch, encoder: Encoder) -> None:
    hits = _hits(passages, encoder, "What does the pass statement do?", 10)
    assert len(hits) == 10
    assert hits[0].passage.doc_id == "pyref:pass"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("budget", [0, 30, 100, 250, 400, 700, 1024, 3000])
def test_budget_is_never_exceeded_and_report_is_right(
    passages: PassageSearch, encoder: Encoder, prompts: PromptBuilder, budget: int
) -> None:
    hits = _hits(passages, encoder, "How are exceptions raised and handled?", 20)
    ctx = passages.pack(hits, budget)
    text = context_text(prompts, ctx.hits)
    assert ctx.tokens == len(prompts.context_ids(ctx.hits))
    assert ctx.tokens <= budget
    # Counting the text from scratch agrees to within a token per join (BPE merges across pieces).
    assert abs(prompts.count(text) - ctx.tokens) <= len(ctx.hits)
    assert ctx.budget == budget
    # Nothing lost or invented: packed + dropped are exactly the hits, and packed keeps rank order.
    assert sorted(h.passage.id for h in ctx.hits + ctx.dropped) == sorted(h.passage.id for h in hits)
    ranks = [hits.index(h) for h in ctx.hits]
    assert ranks == sorted(ranks)
    # Passages go in whole, never cut.
    for hit in ctx.hits:
        assert hit.passage.text in text


def test_big_passage_is_skipped_whole_and_a_smaller_later_one_still_fits(
    passages: PassageSearch, prompts: PromptBuilder
) -> None:
    small = Passage("d#0", "d", "Small", "The pass statement does nothing.")
    big = Passage("d#1", "d", "Big", "word " * 400)
    small2 = Passage("d#2", "d", "Small too", "The break statement ends a loop.")
    hits = [Hit(small, 0.9), Hit(big, 0.8), Hit(small2, 0.7)]
    budget = len(prompts.context_ids([hits[0], hits[2]])) + 2
    ctx = passages.pack(hits, budget)
    assert [h.passage.id for h in ctx.hits] == ["d#0", "d#2"]
    assert [h.passage.id for h in ctx.dropped] == ["d#1"]
    assert ctx.tokens <= budget


def test_empty_hits(passages: PassageSearch) -> None:
    ctx = passages.pack([], 100)
    assert ctx.hits == [] and ctx.tokens == 0 and ctx.dropped == []


def test_default_corpus_keeps_its_ids(passages: PassageSearch) -> None:
    """The built-in corpus is stored as documents pyref:<topic> with chunks <doc_id>#<n>."""
    stored = passages.index.store.get("pyref:break")
    assert stored is not None and stored.doc.title.startswith('The "break" statement')
    assert [c.id for c in stored.chunks] == [f"pyref:break#{n}" for n in range(len(stored.chunks))]
    assert passages.index.store.stats()["documents"] == 79


def test_prompt_fits_the_model_context(settings: Settings, passages: PassageSearch, encoder: Encoder) -> None:
    """The request's budget leaves room for the question and the longest allowed answer."""
    from rag_service.pipeline.pipeline import Pipeline

    pipeline = Pipeline(encoder, passages, generator=None, settings=settings)  # type: ignore[arg-type]
    question = "Explain " + "very " * 300 + "carefully how the with statement works."
    max_tokens = settings.generator.max_tokens_limit
    req = pipeline.new_request(question, top_k=50, max_tokens=max_tokens, temperature=0.0, stop=[])
    ctx = passages.pack(_hits(passages, encoder, question, 50), req.plan.context_budget)
    prompt = req.plan.build_prompt(ctx.hits)
    assert ctx.tokens > 0
    assert len(prompt) + max_tokens <= settings.generator.max_model_len


def test_question_too_long_for_the_model_is_refused(
    settings: Settings, passages: PassageSearch, encoder: Encoder
) -> None:
    from rag_service.errors import InvalidRequest
    from rag_service.pipeline.pipeline import Pipeline

    pipeline = Pipeline(encoder, passages, generator=None, settings=settings)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as err:
        pipeline.new_request("why " * 3000, top_k=4, max_tokens=128, temperature=0.0, stop=[])
    assert err.value.code == "context_length_exceeded"


def test_assembled_prompt_is_the_chat_template_text(
    passages: PassageSearch, encoder: Encoder, prompts: PromptBuilder
) -> None:
    """The ids sent to the engine spell exactly what the model's chat template renders."""
    question = "What does the pass statement do? Ünïcödé ✓"
    hits = _hits(passages, encoder, question, 3)
    ids = prompts.build(prompts.encode(question), hits)
    assert prompts.decode(ids) == prompts.render(question, context_text(prompts, hits))
    assert prompts.decode(prompts.build(prompts.encode(question), [])) == prompts.render(question, "")
