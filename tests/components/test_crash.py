"""``kill -9`` an ingesting process at random points, restart, and check that every acknowledged
document is searchable exactly once (real encoder, SQLite, FAISS; SciFact abstracts), by its vector
and by its words (the FTS5 index holds exactly the live chunks)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from rag_service.config import IndexSettings
from rag_service.domain import Document
from rag_service.embedding.encoder import Encoder
from rag_service.index.live import LiveIndex
from rag_service.ingestion.corpus import read_jsonl
from tests.support.inspection import live_ids, live_vector_ids, text_row_ids, vector_ids
from tests.support.paths import REPO, scifact_dir

DOCS = 64
KILLS = 3
BATCH = 4


def _ingest(corpus: Path, index: Path, ack: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RAG_INDEX__SNAPSHOT_EVERY": "12",  # snapshots often, so kills also land while one is written
        "RAG_INGEST__NICE": "0",
    }
    command = [sys.executable, "-m", "rag_service.cli", "ingest", str(corpus), "--index-dir", str(index)]
    command += ["--batch-size", str(BATCH), "--ack-log", str(ack)]
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _acked(ack: Path) -> list[str]:
    return ack.read_text().split() if ack.exists() else []


def _check(index: Path, encoder: Encoder, docs: dict[str, Document], must_have: list[str]) -> int:
    """Every acknowledged document is stored once and found first by its own text; no vector twice."""
    live = LiveIndex.open(index, encoder.index_spec(), IndexSettings())
    try:
        ids = vector_ids(live).tolist()
        assert len(ids) == len(set(ids)), "a vector is in the graph twice after the restart"
        assert live_ids(live) <= set(ids)
        stored = live.store.stats()
        assert stored["chunks"] == len(live)
        # The full-text index is written in the same transactions: exactly the live chunks, no more.
        assert text_row_ids(live.store) == live_vector_ids(live.store) == live_ids(live)
        for doc_id in must_have:
            doc = live.store.get(doc_id)
            assert doc is not None, f"acknowledged document {doc_id} was lost"
            assert len(doc.chunks) >= 1
        if must_have:
            queries = encoder.encode_queries([f"{docs[d].title}\n{docs[d].text}"[:1000] for d in must_have])
            for doc_id, query in zip(must_have, queries, strict=True):
                hits = live.search(query, 5)
                found = [h.passage.doc_id for h in hits]
                assert found[0] == doc_id, f"{doc_id} is not its own best match: {found}"
                assert len({h.passage.id for h in hits}) == len(hits), "a passage came back twice"
                by_title = [live.passage(vid) for vid, _ in live.store.text_search(docs[doc_id].title, 20)]
                assert doc_id in [p.doc_id for p in by_title if p], f"{doc_id} not found by its title's words"
        return int(stored["documents"])
    finally:
        live.close()


def test_kill_9_during_ingestion_loses_and_duplicates_nothing(tmp_path: Path, encoder: Encoder) -> None:
    source = scifact_dir() / "corpus.jsonl"
    docs = {}
    for doc in read_jsonl(source):
        docs[doc.id] = doc
        if len(docs) == DOCS:
            break
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(
        b"".join(orjson.dumps({"_id": d.id, "title": d.title, "text": d.text}) + b"\n" for d in docs.values())
    )
    index, ack = tmp_path / "idx", tmp_path / "acked.txt"
    seed = int(os.environ.get("RAG_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"kill -9 test seed {seed} (RAG_TEST_SEED to replay)")

    for kill in range(KILLS):
        before = len(_acked(ack))
        proc = _ingest(corpus, index, ack)
        # Kill once a random number of new batches is acknowledged, plus a random delay so the kill
        # lands anywhere: mid-encode, mid-commit, mid-snapshot.
        target = before + BATCH * rng.randint(1, 3)
        deadline = time.monotonic() + 180
        while len(_acked(ack)) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.6))
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            assert proc.returncode == 0, stderr[-3000:]
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        acked = _acked(ack)
        print(f"kill {kill + 1}: {len(acked)} documents acknowledged")
        _check(index, encoder, docs, acked)

    final = _ingest(corpus, index, ack)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err.decode(errors="replace")[-3000:]
    assert len(set(_acked(ack))) == DOCS
    assert _check(index, encoder, docs, list(docs)) == DOCS
