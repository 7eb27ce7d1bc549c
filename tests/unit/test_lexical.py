"""FTS5 query building: hostile input is always a valid query, never an FTS5 syntax error."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from rag_service.storage import lexical


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(":memory:")
    c.execute(lexical.FTS_SCHEMA)
    rows = [
        (1, "The pass statement", "pass is a null operation; when it is executed, nothing happens."),
        (2, "Lambdas", "Lambda expressions are used to create anonymous functions."),
        (3, "Café société", "Naïve résumé about the café and its crème brûlée."),
        (4, "日本語", "東京 は 日本 の 首都 です"),
        (5, "Running", "The runner runs; running is what runners do."),
    ]
    c.executemany(f"INSERT INTO {lexical.FTS_TABLE}(rowid, title, text) VALUES (?, ?, ?)", rows)
    yield c
    c.close()


def test_finds_by_words_and_stems(conn: sqlite3.Connection) -> None:
    assert lexical.search(conn, "What does the pass statement do?", 3)[0][0] == 1
    assert lexical.search(conn, "run", 3)[0][0] == 5  # porter: run ~ runs ~ running
    hits = lexical.search(conn, "anonymous function", 5)
    assert [rowid for rowid, _ in hits] == [2]
    assert hits[0][1] > 0, "scores are negated bm25: higher is better"


def test_unicode_and_diacritics(conn: sqlite3.Connection) -> None:
    assert lexical.search(conn, "cafe creme", 3)[0][0] == 3
    assert lexical.search(conn, "東京", 3)[0][0] == 4


@pytest.mark.parametrize(
    "text",
    [
        '"',
        '"unbalanced quote',
        "pass*",
        "title:pass",
        "NEAR(pass statement)",
        "pass AND OR NOT",
        "^pass",
        "(pass",
        "-pass +lambda",
        "pass; DROP TABLE chunk_fts; --",
        "{title text}: pass",
        "\x00\x01 pass \u202e",
        "🐍🐍🐍 pass",
        "a" * 50_000,
        " ".join(f"word{i}" for i in range(5000)),
    ],
)
def test_hostile_input_is_a_valid_query(conn: sqlite3.Connection, text: str) -> None:
    hits = lexical.search(conn, text, 5)  # must not raise sqlite3.OperationalError
    assert isinstance(hits, list)
    if "pass" in text:
        assert 1 in [rowid for rowid, _ in hits]


@pytest.mark.parametrize("text", ["", "   ", "the of and", "?!.,;", "___"])
def test_nothing_searchable_gives_no_hits(conn: sqlite3.Connection, text: str) -> None:
    assert lexical.match_expression(text) is None
    assert lexical.search(conn, text, 5) == []


def test_terms_are_capped_and_deduplicated() -> None:
    expression = lexical.match_expression(" ".join(f"w{i} w{i}" for i in range(1000)))
    assert expression is not None
    assert expression.count(" OR ") == lexical.MAX_TERMS - 1
    assert expression.startswith('"w0" OR "w1"')
