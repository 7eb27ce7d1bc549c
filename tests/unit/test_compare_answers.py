"""The paired test that decides whether one generator's lead over another is real."""

from __future__ import annotations

from math import comb
from typing import Any

import pytest

from benchmarks.compare_answers import mcnemar


def _run(right: dict[str, bool]) -> dict[str, Any]:
    return {"squad": {"records": [{"id": q, "contains": ok} for q, ok in right.items()]}}


def _two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at 1/2, written out independently of scipy."""
    tail = sum(comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_counts_only_the_questions_the_runs_disagree_on() -> None:
    a = _run({"q1": True, "q2": True, "q3": False, "q4": False, "q5": True})
    b = _run({"q1": True, "q2": False, "q3": True, "q4": False, "q5": False})
    only_a, only_b, p = mcnemar(a, b)  # type: ignore[misc]
    assert (only_a, only_b) == (2, 1)
    assert p == pytest.approx(_two_sided(1, 3))


def test_a_lopsided_disagreement_is_significant_and_a_balanced_one_is_not() -> None:
    ids = [f"q{i}" for i in range(40)]
    first = _run({q: i < 26 for i, q in enumerate(ids)})
    second = _run({q: 26 <= i < 32 for i, q in enumerate(ids)})
    only_a, only_b, p = mcnemar(first, second)  # type: ignore[misc]
    assert (only_a, only_b) == (26, 6)
    assert p == pytest.approx(_two_sided(6, 32)) and p < 0.05
    balanced = _run({q: 26 <= i < 52 for i, q in enumerate(ids)})
    assert mcnemar(_run({q: i < 14 for i, q in enumerate(ids)}), balanced)[2] > 0.05  # type: ignore[index]


def test_identical_runs_tie_and_different_questions_cannot_be_paired() -> None:
    same = _run({"q1": True, "q2": False})
    assert mcnemar(same, same) == (0, 0, 1.0)
    assert mcnemar(same, _run({"q1": True, "q3": False})) is None
