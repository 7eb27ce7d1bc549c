"""Passages by index position, kept beside the FAISS index as JSON Lines.

Position ``i`` in the store is vector id ``i`` in the index.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import orjson

from rag_service.index import write_atomically
from rag_service.types import Passage

STORE_FILE = "passages.jsonl"


class PassageStore:
    def __init__(self, passages: Iterable[Passage] = ()) -> None:
        self._passages: list[Passage] = list(passages)

    def __len__(self) -> int:
        return len(self._passages)

    def get(self, position: int) -> Passage:
        return self._passages[position]

    def extend(self, passages: Iterable[Passage]) -> None:
        self._passages.extend(passages)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        lines = b"".join(
            orjson.dumps({"id": p.id, "doc_id": p.doc_id, "title": p.title, "text": p.text}) + b"\n"
            for p in self._passages
        )
        write_atomically(folder / STORE_FILE, lines)

    @classmethod
    def load(cls, folder: Path) -> PassageStore:
        with open(folder / STORE_FILE, "rb") as f:
            return cls(Passage(**orjson.loads(line)) for line in f if line.strip())
