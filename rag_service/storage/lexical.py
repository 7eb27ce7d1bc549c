"""Lexical retrieval with SQLite FTS5: BM25 over the chunks' title and text, porter-stemmed.

Any user text becomes a safe FTS5 query: it is cut into words the way FTS5's ``unicode61`` tokenizer
cuts them, common English words are dropped, and each remaining word is quoted and OR-ed. Quoting
means no character of the input (``"``, ``*``, ``:``, ``^``, ``NEAR``, ``AND``...) is read as FTS5
syntax, so a query can never be an FTS5 syntax error. Measured on the shared SciFact claims
(PLATFORM.md): this query shape with ``porter unicode61`` gives nDCG@10 0.6996, above dense MiniLM.
"""

from __future__ import annotations

import re
import sqlite3

FTS_TABLE = "chunk_fts"
# porter stems English words; unicode61 folds case and diacritics for every script.
FTS_SCHEMA = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5(title, text, tokenize='porter unicode61')"
)
MAX_TERMS = 64  # a longer query adds little recall and costs a posting-list scan per term

# unicode61's token characters: letters and digits of any script (not "_", which it splits on).
_WORD = re.compile(r"[^\W_]+")
_STOPWORDS_TEXT = """a about above after again against all am an and any are as at be because been
    before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def match_expression(text: str) -> str | None:
    """The FTS5 MATCH string for ``text``, or None when it holds no searchable word."""
    terms: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS or word in seen:
            continue
        seen.add(word)
        terms.append(f'"{word}"')  # _WORD never matches '"', so the quoting cannot be broken out of
        if len(terms) == MAX_TERMS:
            break
    return " OR ".join(terms) if terms else None


def search(conn: sqlite3.Connection, text: str, k: int) -> list[tuple[int, float]]:
    """Best ``k`` (rowid, bm25 score) pairs, best first; the score is FTS5's bm25 negated (higher is
    better, like the dense side's cosine)."""
    expression = match_expression(text)
    if expression is None or k <= 0:
        return []
    rows = conn.execute(
        f"SELECT rowid, bm25({FTS_TABLE}) AS s FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ? ORDER BY s LIMIT ?",
        (expression, k),
    ).fetchall()
    return [(int(rowid), -float(score)) for rowid, score in rows]
