"""Reciprocal-rank fusion on hand-made rankings."""

from __future__ import annotations

import pytest

from rag_service.retrieval.fusion import reciprocal_rank_fusion


def test_scores_are_sums_of_reciprocal_ranks() -> None:
    fused = reciprocal_rank_fusion({"dense": ["a", "b", "c"], "lexical": ["c", "a"]}, k=60)
    by_id = {f.id: f for f in fused}
    assert by_id["a"].score == pytest.approx(1 / 61 + 1 / 62)
    assert by_id["c"].score == pytest.approx(1 / 63 + 1 / 61)
    assert by_id["b"].score == pytest.approx(1 / 62)
    assert [f.id for f in fused] == ["a", "c", "b"]
    assert by_id["a"].ranks == {"dense": 1, "lexical": 2}
    assert by_id["b"].ranks == {"dense": 2}


def test_agreement_beats_a_single_first_place() -> None:
    # "x" is first in one list only; "y" is second in both: fusion prefers the consensus.
    fused = reciprocal_rank_fusion({"dense": ["x", "y"], "lexical": ["z", "y"]})
    assert fused[0].id == "y"


def test_ties_break_on_best_rank_then_first_list() -> None:
    fused = reciprocal_rank_fusion({"dense": ["a", "b"], "lexical": ["b", "a"]})
    assert fused[0].score == fused[1].score
    assert [f.id for f in fused] == ["a", "b"]  # equal best ranks: a appeared first


def test_one_list_keeps_its_order_and_empty_lists_are_fine() -> None:
    assert [f.id for f in reciprocal_rank_fusion({"dense": [3, 1, 2], "lexical": []})] == [3, 1, 2]
    assert reciprocal_rank_fusion({}) == []


def test_a_repeated_id_counts_once() -> None:
    fused = reciprocal_rank_fusion({"dense": ["a", "a", "b"]}, k=0)
    assert fused[0].score == pytest.approx(1.0)
    assert fused[0].ranks == {"dense": 1}


def test_negative_k_is_refused() -> None:
    with pytest.raises(ValueError):
        reciprocal_rank_fusion({"dense": ["a"]}, k=-1)
