"""The document store: SQLite in WAL mode, the durable source of truth of an index folder.

Tables:
- ``meta``: what the embeddings are (encoder, dimension, metric, normalization) and ``last_seq``;
- ``documents``: the live documents, with a hash of their content (idempotent upserts);
- ``chunks``: one row per chunk: its id (``<doc_id>#<n>``), text, embedding (float32 bytes), the
  sequence number of the batch that added it and, once the document was replaced or deleted, the one
  that tombstoned it (``deleted_seq``). The row id is the chunk's vector id in FAISS and is never
  reused (AUTOINCREMENT), so a snapshot of the index can always be matched to rows. A tombstone
  keeps only those ids: its text and embedding are dropped, so replacing documents reuses the space.

Every write batch is ONE transaction that takes the next sequence number: a batch is wholly there or
not at all, and the FAISS index (derived, see ``rag_service/index/``) replays exactly the rows newer than its
snapshot. ``synchronous=FULL`` makes a commit durable before it returns, so an acknowledged write
survives ``kill -9`` (and a power cut).

- ``chunk_fts``: the full-text index of the live chunks (FTS5, see ``lexical.py``), row id = vector
  id. ``write`` keeps it in the same transaction as the chunks, so the lexical and the dense retriever
  can never disagree about what exists. A database written before it existed gets it (filled from the
  live chunks, one transaction) the first time it is opened for writing.

Reads for lexical search go through one read-only connection per thread (``text_search``): in WAL
mode they see the last committed batch and never wait for a write in progress, nor for each other.

Longer than 400 lines: the schema, the one-time upgrades of older databases and every query of
the store stay together, since each write's invariants (one transaction, FTS5 in step with the
chunks, tombstones) are only checkable in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_service.domain import Document, Passage
from rag_service.storage import lexical

STORE_FILE = "documents.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000  # another process (an `ingest` run) may hold the write lock for a batch

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE chunks (
    vector_id INTEGER PRIMARY KEY AUTOINCREMENT,
    chunk_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    embedding BLOB NOT NULL,
    seq INTEGER NOT NULL,
    deleted_seq INTEGER
);
CREATE INDEX chunks_live_by_doc ON chunks (doc_id) WHERE deleted_seq IS NULL;
CREATE INDEX chunks_by_seq ON chunks (seq);
CREATE INDEX chunks_by_deleted_seq ON chunks (deleted_seq) WHERE deleted_seq IS NOT NULL;
"""
# A read connection's query is interrupted after this many SQLite VM steps once its time is up.
_PROGRESS_STEPS = 1000


class StoreQueryError(Exception):
    """A read of the store failed (the database's own error is the cause)."""


class SearchInterrupted(StoreQueryError):
    """A full-text search was stopped inside SQLite because its time (``until``) had passed."""


def content_hash(doc: Document) -> str:
    """Same id + same hash = nothing to do (an idempotent re-send)."""
    return hashlib.sha256(f"{doc.title}\x00{doc.text}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """A document ready to store: its chunks and their embeddings (one row per chunk)."""

    doc: Document
    chunks: list[str]
    embeddings: np.ndarray
    hash: str = ""


@dataclass(slots=True)
class WriteResult:
    seq: int
    upserted: int = 0
    unchanged: int = 0
    chunks: int = 0
    deleted: int = 0
    upserted_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Changes:
    """Rows committed after some sequence number, read in one consistent transaction."""

    last_seq: int
    added: list[tuple[int, Passage]]  # live chunks added after the sequence number
    embeddings: np.ndarray  # one row per ``added``
    removed: list[int]  # vector ids tombstoned after the sequence number (added before it)
    kept: list[tuple[int, Passage]]  # live chunks added up to it (only asked for when loading)


@dataclass(frozen=True, slots=True)
class StoredDocument:
    doc: Document
    seq: int
    hash: str
    chunks: list[Passage]


class DocumentStore:
    """One SQLite connection shared by the threads of a process (serialized by a lock: every
    statement is short, the embedding work happens before ``write``)."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection
        self._lock = threading.RLock()
        self._readers = threading.local()  # one read connection per thread (lexical search)
        self._reader_list: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    # --- opening -------------------------------------------------------------------------------

    @staticmethod
    def exists(folder: Path) -> bool:
        """A folder holds a complete store: the file exists and its schema was committed."""
        path = folder / STORE_FILE
        if not path.is_file():
            return False
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return False
        return row is not None and int(row[0]) == SCHEMA_VERSION

    @classmethod
    def open(cls, folder: Path) -> DocumentStore:
        if not cls.exists(folder):
            raise FileNotFoundError(f"no document store at {folder / STORE_FILE}")
        db = _connect(folder / STORE_FILE)
        _ensure_text_index(db)
        _strip_old_tombstones(db)
        return cls(folder / STORE_FILE, db)

    @classmethod
    def create(cls, folder: Path, spec: dict[str, Any]) -> DocumentStore:
        """A new, empty store whose embeddings will be described by ``spec``."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / STORE_FILE
        if path.exists():
            # A file without a committed schema (a crash during creation) holds nothing: start over.
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        db = _connect(path)
        with _transaction(db):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(lexical.FTS_SCHEMA)
            rows = {"schema": str(SCHEMA_VERSION), "last_seq": "0", **{k: str(v) for k, v in spec.items()}}
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows.items())
        return cls(path, db)

    def vacuum(self) -> None:
        """Rewrite the file without its free pages (``rag-service compact``): the space tombstones
        gave up goes back to the disk. Row ids, and so vector ids, are kept."""
        with self._lock:
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._readers_lock:
            for reader in self._reader_list:
                with contextlib.suppress(sqlite3.Error):
                    reader.close()
            self._reader_list.clear()
        with self._lock:
            # Fold the WAL back into the main file so the folder is one file at rest.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    @contextlib.contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The write connection, held for one caller at a time (``replication.py``)."""
        with self._lock:
            yield self._db

    # --- reading -------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def last_seq(self) -> int:
        with self._lock:
            return _last_seq(self._db)

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        with self._lock:
            return _hashes(self._db, ids)

    def get(self, doc_id: str) -> StoredDocument | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, title, text, seq, content_hash FROM documents WHERE id = ?", (doc_id,)
            ).fetchone()
            if row is None:
                return None
            chunks = self._db.execute(
                "SELECT chunk_id, doc_id, title, text FROM chunks "
                "WHERE doc_id = ? AND deleted_seq IS NULL ORDER BY vector_id",
                (doc_id,),
            ).fetchall()
        return StoredDocument(Document(row[0], row[1], row[2]), row[3], row[4], [Passage(*c) for c in chunks])

    def documents(self) -> Iterator[Document]:
        """Every live document, in id order (what `reindex` re-embeds)."""
        with self._lock:
            rows = self._db.execute("SELECT id, title, text FROM documents ORDER BY id").fetchall()
        for row in rows:
            yield Document(*row)

    def changes_since(self, seq: int, *, all_live: bool = False) -> Changes:
        """Chunks added (still live) and tombstoned after ``seq``; with ``all_live`` also the live
        chunks added up to ``seq`` (their vectors are in the snapshot, their passages are needed)."""
        with self._lock, _transaction(self._db, write=False):
            last = _last_seq(self._db)
            rows = self._db.execute(
                "SELECT vector_id, chunk_id, doc_id, title, text, embedding FROM chunks "
                "WHERE seq > ? AND deleted_seq IS NULL ORDER BY vector_id",
                (seq,),
            ).fetchall()
            removed = [
                r[0]
                for r in self._db.execute(
                    "SELECT vector_id FROM chunks WHERE deleted_seq > ? AND seq <= ?", (seq, seq)
                ).fetchall()
            ]
            older: list[Any] = []
            if all_live:
                older = self._db.execute(
                    "SELECT vector_id, chunk_id, doc_id, title, text FROM chunks "
                    "WHERE seq <= ? AND deleted_seq IS NULL ORDER BY vector_id",
                    (seq,),
                ).fetchall()
        added = [(r[0], Passage(r[1], r[2], r[3], r[4])) for r in rows]
        kept = [(r[0], Passage(r[1], r[2], r[3], r[4])) for r in older]
        return Changes(last, added, _vectors([r[5] for r in rows]), removed, kept)

    def live_embeddings(self, vector_ids: Sequence[int]) -> tuple[list[int], np.ndarray]:
        """Stored vectors of these chunks (a rebuild needs no re-encoding), in the order asked, with
        the ids they belong to: a chunk tombstoned since it was asked for is left out (its row no
        longer holds an embedding)."""
        found: dict[int, bytes] = {}
        with self._lock:
            for start in range(0, len(vector_ids), 500):
                part = list(vector_ids[start : start + 500])
                marks = ",".join("?" * len(part))
                found.update(
                    self._db.execute(
                        f"SELECT vector_id, embedding FROM chunks WHERE vector_id IN ({marks}) "
                        "AND deleted_seq IS NULL",
                        part,
                    ).fetchall()
                )
        ids = [i for i in vector_ids if i in found]
        return ids, _vectors([found[i] for i in ids])

    def stats(self) -> dict[str, int]:
        with self._lock, _transaction(self._db, write=False):
            docs = self._db.execute("SELECT count(*) FROM documents").fetchone()[0]
            live = self._db.execute("SELECT count(*) FROM chunks WHERE deleted_seq IS NULL").fetchone()[0]
            dead = self._db.execute("SELECT count(*) FROM chunks WHERE deleted_seq IS NOT NULL").fetchone()[0]
            last = _last_seq(self._db)
            page = self._db.execute("PRAGMA page_size").fetchone()[0]
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return {
            "documents": docs,
            "chunks": live,
            "tombstoned_chunks": dead,
            "last_seq": last,
            "database_bytes": pages * page,
            "free_bytes": free * page,  # what `rag-service compact` would give back to the disk
        }

    def text_search(self, text: str, k: int, *, until: float | None = None) -> list[tuple[int, float]]:
        """Lexical search (``lexical.search``): the best ``k`` (vector id, BM25 score) pairs among the
        live chunks. ``until`` (``time.monotonic()``) interrupts the query inside SQLite once passed
        (``SearchInterrupted``), so a late search stops using the CPU; any other database error is a
        ``StoreQueryError``."""
        db = self._reader()
        interrupted = False

        def past_deadline() -> int:
            nonlocal interrupted
            interrupted = until is not None and time.monotonic() > until
            return 1 if interrupted else 0

        db.set_progress_handler(past_deadline, _PROGRESS_STEPS)
        try:
            return lexical.search(db, text, k)
        except sqlite3.Error as exc:
            if interrupted:
                raise SearchInterrupted("the full-text search ran past its time") from exc
            raise StoreQueryError(f"full-text search failed: {exc}") from exc
        finally:
            db.set_progress_handler(None, 0)

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._readers, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
            db.execute("PRAGMA query_only=ON")
            self._readers.db = db
            with self._readers_lock:
                self._reader_list.append(db)
        return db

    # --- writing -------------------------------------------------------------------------------

    def write(self, upserts: Sequence[DocumentWrite] = (), deletes: Sequence[str] = ()) -> WriteResult:
        """One transaction: replace the chunks of changed documents, tombstone deleted ones, take the
        next sequence number. Documents whose content hash is already stored are left alone."""
        with self._lock, _transaction(self._db):
            seq = _last_seq(self._db) + 1
            result = WriteResult(seq=seq)
            known = _hashes(self._db, [w.doc.id for w in upserts])
            for w in upserts:
                digest = w.hash or content_hash(w.doc)
                if known.get(w.doc.id) == digest:
                    result.unchanged += 1
                    continue
                self._tombstone(w.doc.id, seq)
                self._db.execute(
                    "INSERT INTO documents (id, title, text, content_hash, seq) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET title = excluded.title, text = excluded.text, "
                    "content_hash = excluded.content_hash, seq = excluded.seq",
                    (w.doc.id, w.doc.title, w.doc.text, digest, seq),
                )
                vectors = np.ascontiguousarray(w.embeddings, dtype=np.float32)
                self._db.executemany(
                    "INSERT INTO chunks (chunk_id, doc_id, title, text, embedding, seq) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (f"{w.doc.id}#{n}", w.doc.id, w.doc.title, text, vectors[n].tobytes(), seq)
                        for n, text in enumerate(w.chunks)
                    ],
                )
                result.upserted += 1
                result.chunks += len(w.chunks)
                result.upserted_ids.append(w.doc.id)
            for doc_id in deletes:
                if self._tombstone(doc_id, seq):
                    self._db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
                    result.deleted += 1
            # The batch's surviving chunks enter the full-text index in the same transaction.
            self._db.execute(
                f"INSERT INTO {lexical.FTS_TABLE} (rowid, title, text) "
                "SELECT vector_id, title, text FROM chunks WHERE seq = ? AND deleted_seq IS NULL",
                (seq,),
            )
            if result.upserted or result.deleted:
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(seq),))
            else:
                result.seq = seq - 1  # nothing changed: no new sequence number
        return result

    def _tombstone(self, doc_id: str, seq: int) -> int:
        self._db.execute(
            f"DELETE FROM {lexical.FTS_TABLE} WHERE rowid IN "
            "(SELECT vector_id FROM chunks WHERE doc_id = ? AND deleted_seq IS NULL)",
            (doc_id,),
        )
        dead = _strip(self._db, "doc_id = ? AND deleted_seq IS NULL", (doc_id,), deleted_seq=seq)
        existed = self._db.execute("SELECT 1 FROM documents WHERE id = ?", (doc_id,)).fetchone()
        return max(dead, 1 if existed else 0)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it is acknowledged
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return db


def _ensure_text_index(db: sqlite3.Connection) -> None:
    """Databases written before the full-text index existed get it, filled from the live chunks.
    Checked inside the write transaction, so two processes opening the store at once fill it once."""
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    if db.execute(exists, (lexical.FTS_TABLE,)).fetchone():
        return
    with _transaction(db):
        if db.execute(exists, (lexical.FTS_TABLE,)).fetchone():
            return
        db.execute(lexical.FTS_SCHEMA)
        db.execute(
            f"INSERT INTO {lexical.FTS_TABLE} (rowid, title, text) "
            "SELECT vector_id, title, text FROM chunks WHERE deleted_seq IS NULL"
        )


def _strip(db: sqlite3.Connection, where: str, params: Sequence[Any], *, deleted_seq: int | None) -> int:
    """Turn the chunks ``where`` matches into tombstones: rows that keep their ids and sequence numbers
    (what a graph needs to drop the vector) but not the text and embedding, which nothing reads again.
    ``deleted_seq``: the batch that tombstones them (None: they are tombstones already). The rows are
    deleted and written back small, because unlike an UPDATE a delete lets SQLite merge the emptied
    pages, which new chunks then reuse: replacing a corpus does not grow the file by the old copy."""
    rows = db.execute(
        f"SELECT vector_id, chunk_id, doc_id, seq, deleted_seq FROM chunks WHERE {where}", params
    ).fetchall()
    db.execute(f"DELETE FROM chunks WHERE {where}", params)
    db.executemany(
        "INSERT INTO chunks (vector_id, chunk_id, doc_id, title, text, embedding, seq, deleted_seq) "
        "VALUES (?, ?, ?, '', '', x'', ?, ?)",
        [(*row[:4], row[4] if deleted_seq is None else deleted_seq) for row in rows],
    )
    return len(rows)


def _strip_old_tombstones(db: sqlite3.Connection) -> None:
    """Tombstones written before they were stripped (``_strip``) lose their text and embedding, once,
    in one transaction. The freed pages are reused by new chunks; ``rag-service compact`` returns them."""
    fat = "deleted_seq IS NOT NULL AND length(embedding) > 0"
    if not db.execute(f"SELECT 1 FROM chunks WHERE {fat} LIMIT 1").fetchone():
        return
    with _transaction(db):
        _strip(db, fat, (), deleted_seq=None)


class _transaction:
    """``BEGIN IMMEDIATE`` (writes: take the write lock up front, no upgrade deadlock) or a plain
    ``BEGIN`` (reads: one consistent snapshot); commit on success, roll back on any error."""

    def __init__(self, db: sqlite3.Connection, *, write: bool = True) -> None:
        self._db = db
        self._begin = "BEGIN IMMEDIATE" if write else "BEGIN"

    def __enter__(self) -> None:
        self._db.execute(self._begin)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _last_seq(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])


def _hashes(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        part = list(ids[start : start + 500])
        marks = ",".join("?" * len(part))
        found.update(
            db.execute(f"SELECT id, content_hash FROM documents WHERE id IN ({marks})", part).fetchall()
        )
    return found


def _vectors(blobs: list[bytes]) -> np.ndarray:
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.frombuffer(b, dtype=np.float32) for b in blobs])
