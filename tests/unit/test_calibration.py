"""The calibration rule and its .env block, and the readiness arithmetic: pure functions, checked
without a model (the live server's budget check is tested in test_readiness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_service.config import BudgetSettings, Settings
from rag_service.domain import Context, Usage
from rag_service.pipeline.pipeline import Answer
from rag_service.runtime import calibration
from rag_service.runtime.calibration import (
    BLOCK_END,
    BLOCK_START,
    budget_sources,
    calibrated_fingerprint,
    propose,
    round_up,
    write_env_block,
)
from rag_service.runtime.readiness import FRESH_QUESTIONS, QuestionSource, Round, stage_times
from rag_service.runtime.service import WARM_UP_QUESTION, WARM_UP_ROUND


@pytest.mark.parametrize(
    ("ms", "expected"), [(87.2, 88), (1234, 1300), (1300, 1300), (9.01, 9.1), (0.4, 0.4)]
)
def test_round_up_keeps_two_significant_digits(ms: float, expected: float) -> None:
    assert round_up(ms) == pytest.approx(expected)


def test_budgets_are_headroom_over_p99_with_floors_and_a_consistent_total() -> None:
    p99 = {"embed": 12.0, "retrieve": 3.0, "first_token": 2900.0, "generate": 11000.0, "total": 11100.0}
    got = propose(p99, reply_reserve_ms=250)
    assert got["embed"] == 100 and got["retrieve"] == 50  # floors: a few-ms p99 is too tight to budget
    assert got["first_token"] == 4400  # 1.5 x 2,900 ms
    assert got["generate"] == 17000  # 1.5 x 11,000 ms
    assert got["total"] == round_up((100 + 50 + 17000) * 1.25 + 250)
    BudgetSettings(**{f"{stage}_ms": ms for stage, ms in got.items()})  # valid settings


def test_generate_never_under_first_token() -> None:
    got = propose({"first_token": 5000.0, "generate": 100.0}, reply_reserve_ms=0)
    assert got["generate"] >= got["first_token"]


def test_env_block_is_rewritten_and_explicit_budgets_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / ".env"
    env.write_text("RAG_SERVER__PORT=9000\nRAG_BUDGET__RETRIEVE_MS=80\n")
    monkeypatch.setenv("RAG_BUDGET__EMBED_MS", "700")
    budgets = {"embed": 100.0, "retrieve": 50.0, "first_token": 900.0, "generate": 5000.0, "total": 6600.0}
    kept = write_env_block(env, budgets, ["# measured here", f"{calibration.FINGERPRINT} abc123"])
    assert kept == ["embed", "retrieve"]  # set by hand: never overwritten
    text = env.read_text()
    assert text.startswith("RAG_SERVER__PORT=9000\nRAG_BUDGET__RETRIEVE_MS=80\n")
    assert BLOCK_START in text and BLOCK_END in text
    assert "RAG_BUDGET__FIRST_TOKEN_MS=900\n" in text and "RAG_BUDGET__EMBED_MS" not in text
    assert "RAG_BUDGET__RETRIEVE_MS=50" not in text
    assert calibrated_fingerprint(env) == "abc123"
    sources = budget_sources(env)
    assert sources == {
        "embed": "environment",
        "retrieve": ".env",
        "first_token": "calibrated",
        "generate": "calibrated",
        "total": "calibrated",
    }
    # A second calibration replaces the block instead of adding another.
    write_env_block(env, {**budgets, "generate": 7000.0}, [f"{calibration.FINGERPRINT} def456"])
    text = env.read_text()
    assert text.count(BLOCK_START) == 1 and "RAG_BUDGET__GENERATE_MS=7000" in text
    assert calibrated_fingerprint(env) == "def456"
    # And what pydantic-settings reads from it is what was written (the environment still wins).
    settings = Settings(_env_file=env)
    assert settings.budget.generate_ms == 7000 and settings.budget.embed_ms == 700
    assert settings.budget.retrieve_ms == 80 and settings.server.port == 9000


def test_no_env_file_means_defaults(tmp_path: Path) -> None:
    assert set(budget_sources(tmp_path / ".env").values()) == {"default"}
    assert calibrated_fingerprint(tmp_path / ".env") is None


def _answer(timings: dict[str, float], degraded: str | None = None) -> Answer:
    return Answer(
        "r",
        "text",
        Context(hits=[], tokens=0, budget=0),
        Usage(completion_tokens=5),
        timings,
        "length",
        degraded=degraded is not None,
        degraded_reason=degraded,
    )


def test_first_token_is_timed_from_the_hand_over_to_the_engine() -> None:
    # first_token in timings_ms counts from the request's start; its budget from the generate stage's.
    times = stage_times(
        _answer({"embed": 10, "retrieve": 2, "first_token": 812, "generate": 3000, "total": 3012})
    )
    assert times["first_token"] == pytest.approx(800)
    # No first token in time: the whole (cut) generate stage is the first token's time.
    late = stage_times(_answer({"embed": 10, "retrieve": 2, "generate": 4001, "total": 4013}, "first_token"))
    assert late["first_token"] == 4001


def test_round_percentiles_and_verdict() -> None:
    r = Round()
    r.samples["embed"] = [10.0, 20.0, 30.0, 40.0]
    assert r.ok and r.percentiles()["embed"] == {"p50": 25.0, "p99": 39.7, "max": 40.0}
    r.misses.append("first_token: 5000 ms, over its 4000 ms budget")
    assert not r.ok and r.describe()["within_budgets"] is False


def test_the_budget_check_never_asks_a_warm_up_question() -> None:
    # vLLM's prefix cache would answer a repeated prompt without its prefill (PLATFORM.md).
    assert not {WARM_UP_QUESTION, *WARM_UP_ROUND} & set(FRESH_QUESTIONS)
    assert len(set(FRESH_QUESTIONS)) == len(FRESH_QUESTIONS)
    source = QuestionSource()
    first, second = source.take(4), source.take(4)
    assert not set(first) & set(second)
