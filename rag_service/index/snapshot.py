"""An index folder on disk: what its vectors are (``IndexSpec``), the snapshot files and their manifest.

Layout of an index folder (see indexes/README.md):
- ``documents.sqlite3``: the source of truth (``rag_service/storage/store.py``);
- ``index-<seq>.faiss`` + ``manifest.json``: a snapshot of the FAISS index holding every chunk
  committed up to sequence ``<seq>``. The manifest names the snapshot file, the encoder, dimension,
  metric, normalization, library versions and that sequence number; it is written last (temp file,
  fsync, rename), so it always points at a complete file.

A store or snapshot whose encoder, dimension, metric or normalization differ from the configured
encoder is refused (version skew): its vectors would be meaningless to the queries. So is one whose
quantization differs, unless the two are measured interchangeable (``INTERCHANGEABLE``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rag_service.errors import IndexUnavailable
from rag_service.index.files import write_atomically
from rag_service.storage.store import STORE_FILE, DocumentStore

MANIFEST_FILE = "manifest.json"
METRIC = "inner_product"
FORMAT = 2  # 1 = the JSON Lines store without a database (before ingestion)
STALE_FILE_S = 600  # an unnamed snapshot file this old is a crash's leftover, not a write in progress
# Quantizations whose vectors may share one index: int8 queries over a float32-built index (and the
# reverse) ranked within 0.005 nDCG@10 of same-backend search on SciFact, SQuAD and PubMedQA
# (BENCHMARKS.md, "Encoder backends"). Any other pair is version skew until measured.
INTERCHANGEABLE = frozenset({"none", "int8-dynamic"})


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """What the vectors are: anything that differs between index and encoder is version skew.
    ``encoder_backend`` (torch, onnx, onnx-int8) is recorded for people, not compared: the backends
    compute the same model, and their quantization is what can change the vectors."""

    encoder: str
    dimension: int
    metric: str = METRIC
    normalized: bool = True
    quantization: str = "none"
    encoder_backend: str = field(default="torch", compare=False)

    def as_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> IndexSpec:
        normalized = meta.get("normalized", False)
        return cls(
            encoder=str(meta.get("encoder", "?")),
            dimension=int(meta.get("dimension", -1)),
            metric=str(meta.get("metric", "?")),
            normalized=normalized in (True, "True", "true", "1"),
            # Indexes from before the ONNX backends were all built by sentence-transformers in float.
            quantization=str(meta.get("quantization", "none")),
            encoder_backend=str(meta.get("encoder_backend", "torch")),
        )

    def compatible(self, other: IndexSpec) -> bool:
        same_vectors = replace(self, quantization="none") == replace(other, quantization="none")
        quantizations = {self.quantization, other.quantization}
        return same_vectors and (len(quantizations) == 1 or quantizations <= INTERCHANGEABLE)


def write_snapshot(folder: Path, data: bytes, manifest: dict[str, Any]) -> None:
    """``index-<seq>-<count>.faiss`` then the manifest naming it, each atomically; then the previous
    snapshot file goes. A crash at any point leaves the manifest naming a complete file."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = _manifest_or_none(folder)
    file = str(manifest["file"])
    write_atomically(folder / file, data)
    write_atomically(folder / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
    if previous and previous.get("file") not in (None, file):
        (folder / str(previous["file"])).unlink(missing_ok=True)
    # Leftovers of a process killed mid-snapshot: a file the manifest never named, a temp file.
    stale = time.time() - STALE_FILE_S
    for path in [*folder.glob("index-*.faiss"), *folder.glob(".index-*.tmp")]:
        if path.name != file and path.stat().st_mtime < stale:
            path.unlink(missing_ok=True)


def _manifest_or_none(folder: Path) -> dict[str, Any] | None:
    try:
        return read_manifest(folder)
    except (IndexUnavailable, ValueError):
        return None


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise IndexUnavailable(
            f"no index at {folder} (missing {MANIFEST_FILE}); build it with `rag-service build-index`"
        )
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def check_spec(meta: dict[str, Any], expected: IndexSpec, where: Path) -> None:
    """Refuse vectors that came from another encoder, dimension, metric, normalization or quantization."""
    found = IndexSpec.from_meta(meta)
    if not found.compatible(expected):
        raise IndexUnavailable(
            f"index at {where} was built with encoder {found.encoder!r} (dimension {found.dimension}, "
            f"{found.metric}, normalized={found.normalized}, quantization {found.quantization}, backend "
            f"{found.encoder_backend}) but the service is configured with encoder {expected.encoder!r} "
            f"(dimension {expected.dimension}, {expected.metric}, normalized={expected.normalized}, "
            f"quantization {expected.quantization}, backend {expected.encoder_backend}); run "
            "`rag-service reindex` to re-embed the stored "
            "documents with the configured encoder",
            code="index_encoder_mismatch",
        )


def index_state(folder: Path) -> str:
    """``ready`` (a document store), ``absent``, ``old`` (format 1: no database) or ``incomplete``."""
    if DocumentStore.exists(folder):
        return "ready"
    if (folder / MANIFEST_FILE).is_file() and not (folder / STORE_FILE).exists():
        return "old"
    if not folder.exists() or not any(folder.iterdir()):
        return "absent"
    return "incomplete"


def open_store(folder: Path, expected: IndexSpec | None) -> DocumentStore:
    """The folder's store, refused with a message that says what to run when it cannot serve."""
    state = index_state(folder)
    if state != "ready":
        what = {
            "absent": "no index",
            "old": "an index in the old format (no documents database)",
            "incomplete": "an incomplete index (no committed documents database)",
        }[state]
        raise IndexUnavailable(f"{folder} holds {what}; run `rag-service build-index` to build it")
    store = DocumentStore.open(folder)
    if expected is not None:
        try:
            check_spec(store.meta(), expected, folder)
        except IndexUnavailable:
            store.close()
            raise
    return store
