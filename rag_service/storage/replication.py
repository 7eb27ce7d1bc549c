"""Store-to-store replication: the rows a store committed after a sequence number, and applying them to
a copy of it (Ray Serve replicas, ``rag_service/scaling/``).

One writer owns the store (SQLite's WAL does not work over network file systems, so replicas on other
machines cannot share the file). Each replica keeps a private copy: it starts from a consistent copy
(``copy_to``, SQLite's online backup) and then applies ``export_changes`` batches in order. Rows keep
their vector ids and sequence numbers, so the copy is row for row the writer's store up to
``last_seq``, and the replica's live index catches up from it with the same code as a single process
(``LiveIndex.catch_up``). The copy is written only by ``apply_changes``: nothing else writes to it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_service.storage import lexical
from rag_service.storage.store import STORE_FILE, DocumentStore, _last_seq, _transaction

# Most sequence numbers (write batches) one export carries: a replica far behind pages through them.
MAX_SEQS_PER_BATCH = 64


@dataclass(slots=True)
class ChangeBatch:
    """Rows committed in (``since``, ``last_seq``]; plain tuples, so it pickles small and fast.
    ``more``: the writer holds batches after ``last_seq`` too (ask again from ``last_seq``)."""

    since: int
    last_seq: int
    # id, title, text, content_hash, seq
    documents: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    deleted_documents: list[str] = field(default_factory=list)
    # vector_id, chunk_id, doc_id, title, text, embedding, seq, deleted_seq
    chunks: list[tuple[Any, ...]] = field(default_factory=list)
    more: bool = False

    def __len__(self) -> int:
        return len(self.chunks) + len(self.deleted_documents)


def export_changes(store: DocumentStore, since: int, *, max_seqs: int = MAX_SEQS_PER_BATCH) -> ChangeBatch:
    """What changed after ``since``, up to ``max_seqs`` batches, read in one consistent transaction."""
    with store.locked() as db, _transaction(db, write=False):
        last = _last_seq(db)
        until = min(last, since + max_seqs)
        batch = ChangeBatch(since=since, last_seq=until, more=until < last)
        if until <= since:
            return batch
        batch.documents = db.execute(
            "SELECT id, title, text, content_hash, seq FROM documents WHERE seq > ? AND seq <= ?",
            (since, until),
        ).fetchall()
        # Chunks added or tombstoned in the range, whole rows: an added chunk carries its embedding, a
        # tombstone (stripped, see store._strip) only its ids and sequence numbers.
        batch.chunks = db.execute(
            "SELECT vector_id, chunk_id, doc_id, title, text, embedding, seq, deleted_seq FROM chunks "
            "WHERE (seq > ? AND seq <= ?) OR (deleted_seq > ? AND deleted_seq <= ?) ORDER BY vector_id",
            (since, until, since, until),
        ).fetchall()
        # A document deleted in the range: its chunks were tombstoned then and it has no row any more.
        batch.deleted_documents = [
            row[0]
            for row in db.execute(
                "SELECT DISTINCT doc_id FROM chunks WHERE deleted_seq > ? AND deleted_seq <= ? "
                "AND doc_id NOT IN (SELECT id FROM documents)",
                (since, until),
            ).fetchall()
        ]
    return batch


def apply_changes(store: DocumentStore, batch: ChangeBatch) -> int:
    """Apply a batch exported from the writer, in one transaction; returns the copy's new last_seq.
    A batch that does not start where the copy stands is refused: applying it would leave a gap."""
    with store.locked() as db, _transaction(db):
        current = _last_seq(db)
        if batch.last_seq <= current:
            return current  # already applied (a retry, or two followers racing)
        if batch.since != current:
            raise ValueError(f"change batch starts at seq {batch.since}, this copy is at seq {current}")
        vector_ids = [(row[0],) for row in batch.chunks]
        # The full-text index follows the chunks: drop every touched row, re-add the live ones.
        db.executemany(f"DELETE FROM {lexical.FTS_TABLE} WHERE rowid = ?", vector_ids)
        db.executemany(
            "INSERT OR REPLACE INTO chunks "
            "(vector_id, chunk_id, doc_id, title, text, embedding, seq, deleted_seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            batch.chunks,
        )
        db.executemany(
            f"INSERT INTO {lexical.FTS_TABLE} (rowid, title, text) VALUES (?, ?, ?)",
            [(row[0], row[3], row[4]) for row in batch.chunks if row[7] is None],
        )
        db.executemany(
            "INSERT OR REPLACE INTO documents (id, title, text, content_hash, seq) VALUES (?, ?, ?, ?, ?)",
            batch.documents,
        )
        db.executemany("DELETE FROM documents WHERE id = ?", [(d,) for d in batch.deleted_documents])
        db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(batch.last_seq),))
        return batch.last_seq


def copy_to(store: DocumentStore, folder: Path) -> int:
    """A consistent copy of the whole store in ``folder`` (SQLite's online backup: writers wait only for
    the page copy, readers not at all); returns the sequence number it holds everything up to."""
    folder.mkdir(parents=True, exist_ok=True)
    target = sqlite3.connect(folder / STORE_FILE)
    try:
        with store.locked() as db:
            db.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to ship
        return _last_seq(target)
    finally:
        target.close()
