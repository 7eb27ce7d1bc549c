"""Document sources: the built-in default corpus and BEIR-style JSON Lines files.

The default corpus is the Python language reference topics that ship with every CPython in
``pydoc_data.topics`` (the text ``help("if")`` prints), so ``make run`` answers questions offline
on any machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from rag_service.types import Document

DEFAULT_CORPUS_NAME = "python-reference"


def python_reference_topics() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name]
        # The first line is the topic's own heading, e.g. 'The "pass" statement'.
        heading = text.strip().splitlines()[0].strip() if text.strip() else name
        yield Document(id=f"pyref:{name}", title=heading, text=text)


def read_jsonl(path: Path) -> Iterator[Document]:
    """BEIR corpus lines: ``{"_id", "title", "text"}``."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                row = orjson.loads(line)
                yield Document(id=str(row["_id"]), title=row.get("title") or "", text=row["text"])
