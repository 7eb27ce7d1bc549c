"""``rag-service ingest --ray``: chunking and embedding on a Ray Data actor pool, every write through the
index's one writer.

Why Ray Data: embedding is the whole cost of ingestion, and it is embarrassingly parallel, while the
store must have exactly one writer. So documents stream through ``map_batches`` into a pool of actors
that each load the encoder and chunker once (``EmbedChunks``) and return the documents with their
chunks and vectors, and the driver hands those to the one writer in committed batches of
``RAG_INGEST__BATCH_DOCS``: the Serve application's ``Writer`` deployment when one runs in the cluster,
else an ``IndexWriter`` on the index folder in this process. The writer checks that the vectors come
from the index's encoder (the actors send their encoder's spec with every row) and their shapes.

What stays as ``rag-service ingest`` does it: the whole input is validated before Ray starts (a bad
document refuses it all, nothing is written); documents whose content is already stored are skipped
before embedding (and the store skips them again, so a re-run is idempotent); chunks and vectors are
the in-process ingestor's (same chunker, same ``embedding_text``, same ``encode_passages``).

Ray is the optional ``ray`` extra: only this module imports it, inside its functions.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
from tqdm import tqdm

from rag_service.config import Settings
from rag_service.domain import Document
from rag_service.errors import RagError
from rag_service.ingestion.ingestor import ack_log, validate_batch
from rag_service.scaling.writer import EmbeddedDocument
from rag_service.storage.store import WriteResult, content_hash

log = logging.getLogger(__name__)
APP_NAME = "rag"
WRITER_DEPLOYMENT = "Writer"
CPUS_PER_ACTOR = 0.5  # fractional: a pool of two and Ray Data's own tasks fit on two cores


@dataclass(slots=True)
class RayIngestReport:
    documents: int = 0  # documents given
    upserted: int = 0
    unchanged: int = 0
    chunks: int = 0
    seconds: float = 0.0
    seq: int = 0
    writer: str = ""  # where the batches went

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0


def actor_payload(settings: Settings) -> dict[str, Any]:
    """What an actor needs to embed as this process would: the encoder (with a small thread count,
    RAG_ENCODER__NUM_THREADS or else ``batching.encoder_threads``, so a pool does not oversubscribe
    the cores) and the chunking settings; paths made absolute (actors may run elsewhere)."""
    encoder = settings.encoder.model_dump(mode="json")
    encoder["num_threads"] = settings.encoder.num_threads or settings.batching.encoder_threads
    encoder["onnx_dir"] = str(Path(settings.encoder.onnx_dir).resolve())
    return {"encoder": encoder, "chunking": settings.chunking.model_dump(mode="json")}


class EmbedChunks:
    """A Ray Data actor: loads the encoder and chunker once, then turns batches of documents into
    documents + chunks + vectors (+ the encoder's spec, which the writer checks)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        from rag_service.embedding.encoder import Encoder
        from rag_service.ingestion.ingestor import chunker_for

        settings = Settings.model_validate(payload)
        self.encoder = Encoder(settings.encoder)
        self.chunker = chunker_for(self.encoder, settings)
        self.spec = orjson.dumps(self.encoder.index_spec().as_meta()).decode()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rag_service.ingestion.ingestor import embedding_text

        ids, titles, texts = (list(batch[k]) for k in ("id", "title", "text"))
        chunked = [self.chunker.split(str(text)) for text in texts]
        # One encode call for the whole batch, as the in-process ingestor does.
        pairs = zip(titles, chunked, strict=True)
        vectors = self.encoder.encode_passages(
            [embedding_text(str(title), c) for title, chunks in pairs for c in chunks]
        )
        per_doc: list[bytes] = []
        offset = 0
        for chunks in chunked:
            per_doc.append(np.ascontiguousarray(vectors[offset : offset + len(chunks)], np.float32).tobytes())
            offset += len(chunks)
        chunk_column = np.empty(len(chunked), dtype=object)
        chunk_column[:] = chunked
        return {
            "id": np.asarray(ids, dtype=object),
            "title": np.asarray(titles, dtype=object),
            "text": np.asarray(texts, dtype=object),
            "chunks": chunk_column,
            "embeddings": np.asarray(per_doc, dtype=object),
            "spec": np.asarray([self.spec] * len(ids), dtype=object),
        }


def embedded_from_row(row: dict[str, Any]) -> tuple[str, EmbeddedDocument]:
    """One output row of ``EmbedChunks`` as the writer takes it, with its encoder spec (JSON)."""
    chunks = [str(c) for c in row["chunks"]]
    vectors = np.frombuffer(bytes(row["embeddings"]), dtype=np.float32)
    vectors = vectors.reshape(len(chunks), -1) if chunks else vectors.reshape(0, 0)
    doc = Document(id=str(row["id"]), title=str(row["title"]), text=str(row["text"]))
    return str(row["spec"]), EmbeddedDocument(doc, chunks, vectors.copy())


# --- where the batches go --------------------------------------------------------------------------


class WriteTarget(Protocol):
    name: str

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]: ...

    def write(self, spec_meta: dict[str, Any], items: Sequence[EmbeddedDocument]) -> WriteResult: ...

    def close(self) -> None: ...


class LocalWriter:
    """An ``IndexWriter`` on the index folder in this process, opened at the first batch (an empty
    folder gets a store for the actors' encoder spec, as ``open_or_create`` would give it)."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.folder = folder
        self.settings = settings
        self.name = f"in-process writer on {folder}"
        self._writer: Any = None

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        from rag_service.storage.store import DocumentStore

        if not DocumentStore.exists(self.folder):
            return {}
        store = DocumentStore.open(self.folder)
        try:
            return store.content_hashes(ids)
        finally:
            store.close()

    def write(self, spec_meta: dict[str, Any], items: Sequence[EmbeddedDocument]) -> WriteResult:
        import asyncio

        return asyncio.run(self._open(spec_meta).write_embedded(spec_meta, items))

    def _open(self, spec_meta: dict[str, Any]) -> Any:
        if self._writer is None:
            from rag_service.index.live import LiveIndex
            from rag_service.index.snapshot import IndexSpec, open_store
            from rag_service.scaling.writer import IndexWriter
            from rag_service.storage.store import DocumentStore

            folder = self.folder
            if not DocumentStore.exists(folder) and (not folder.exists() or not any(folder.iterdir())):
                DocumentStore.create(folder, spec_meta).close()
            store = open_store(folder, None)  # the index's own spec: write_embedded compares the two
            try:
                spec = IndexSpec.from_meta(store.meta())
            finally:
                store.close()
            nice = self.settings.ingest.nice
            live = LiveIndex.open(folder, spec, self.settings.index, background_nice=nice)
            self._writer = IndexWriter(live, self.settings)
        return self._writer

    def stats(self) -> dict[str, Any]:
        return dict(self._writer.stats()) if self._writer is not None else {}

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ServeWriter:
    """The ``Writer`` deployment of the Serve application running in the cluster."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.name = f"the Writer deployment of Serve application {APP_NAME!r}"

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        return dict(_result(self.handle.content_hashes.remote(list(ids))))

    def write(self, spec_meta: dict[str, Any], items: Sequence[EmbeddedDocument]) -> WriteResult:
        result: WriteResult = _result(self.handle.write_embedded.remote(spec_meta, list(items)))
        return result

    def stats(self) -> dict[str, Any]:
        return dict(_result(self.handle.stats.remote()))

    def close(self) -> None:
        pass


def _result(response: Any) -> Any:
    """A handle call's result; our own errors come back as themselves, not wrapped by Ray."""
    from ray.exceptions import RayTaskError

    try:
        return response.result()
    except RayTaskError as exc:
        if isinstance(exc.cause, RagError):
            raise exc.cause from None
        raise


def serve_writer() -> ServeWriter | None:
    """The running Serve application's writer, if this cluster runs one."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    if app is None or str(getattr(app.status, "value", app.status)) != "RUNNING":
        return None
    return ServeWriter(serve.get_deployment_handle(WRITER_DEPLOYMENT, app_name=APP_NAME))


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` ("auto": the one this machine runs), or start a local one on
    127.0.0.1 when None; an already connected driver (tests) keeps its cluster. True if we started
    (and so must stop) it."""
    import ray

    from rag_service.scaling.launch import start_local_cluster

    if ray.is_initialized():
        return False
    if address is None:
        start_local_cluster()
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return True


# --- the pipeline ----------------------------------------------------------------------------------


def ingest_with_ray(
    docs: Sequence[Document],
    settings: Settings,
    target: WriteTarget,
    *,
    actors: int = 1,
    batch_docs: int | None = None,
    cpus_per_actor: float = CPUS_PER_ACTOR,
    progress: bool = True,
    on_commit: Callable[[list[Document], WriteResult], None] | None = None,
) -> RayIngestReport:
    """Embed ``docs`` on a pool of ``actors`` and write them through ``target`` in committed batches.
    Needs a connected Ray driver (``connect``). Raises ``InvalidRequest`` (before anything runs or is
    written) for a bad batch, ``IndexUnavailable`` (code index_encoder_mismatch) for foreign vectors.
    ``on_commit`` gets each committed batch's documents (durable once it is called)."""
    import ray.data

    validate_batch(docs)
    batch = batch_docs or settings.ingest.batch_docs
    report = RayIngestReport(documents=len(docs), writer=target.name)
    started = time.perf_counter()
    known = target.content_hashes([d.id for d in docs])
    todo = [d for d in docs if known.get(d.id) != content_hash(d)]
    report.unchanged = len(docs) - len(todo)
    if on_commit is not None and report.unchanged:  # already stored: as durable as a commit
        on_commit([d for d in docs if known.get(d.id) == content_hash(d)], WriteResult(seq=0))
    if todo:
        dataset = ray.data.from_items([{"id": d.id, "title": d.title, "text": d.text} for d in todo])
        embedded = dataset.map_batches(
            EmbedChunks,
            fn_constructor_kwargs={"payload": actor_payload(settings)},
            compute=ray.data.ActorPoolStrategy(size=max(1, actors)),
            num_cpus=cpus_per_actor,
            batch_size=batch,
            batch_format="numpy",
            udf_modifying_row_count=False,
        )
        pending: list[EmbeddedDocument] = []
        pending_spec = ""
        with tqdm(total=len(todo), desc="ingesting (ray)", unit="doc", disable=not progress) as bar:

            def flush() -> None:
                result = target.write(orjson.loads(pending_spec), pending)
                report.upserted += result.upserted
                report.unchanged += result.unchanged
                report.chunks += result.chunks
                report.seq = max(report.seq, result.seq)
                if on_commit is not None:
                    on_commit([item.doc for item in pending], result)
                bar.update(len(pending))
                bar.set_postfix(new=report.upserted, unchanged=report.unchanged, chunks=report.chunks)
                pending.clear()

            for row in embedded.iter_rows():
                spec, item = embedded_from_row(row)
                if pending and (spec != pending_spec or len(pending) >= batch):
                    flush()
                pending_spec = spec
                pending.append(item)
            if pending:
                flush()
    report.seconds = time.perf_counter() - started
    return report


# --- the command ---------------------------------------------------------------------------------


def ingest_command(settings: Settings, args: argparse.Namespace, docs: list[Document], batch: int) -> int:
    """``rag-service ingest --ray``: prints what it does, returns the exit status."""
    import os

    try:
        import ray
    except ImportError as exc:
        print(
            f"error: {exc}; --ray needs the ray extra: pip install -e '.[ray]' (or make serve-ray)",
            file=sys.stderr,
            flush=True,
        )
        return 2
    if args.actors < 1:
        print("error: --actors must be at least 1", file=sys.stderr, flush=True)
        return 2
    if settings.ingest.nice and args.ray_address is None and not ray.is_initialized():
        os.nice(settings.ingest.nice)  # before the local cluster starts: its workers inherit it
    started = connect(args.ray_address)
    target: LocalWriter | ServeWriter | None = None
    try:
        target = None if args.index_dir else serve_writer()
        if target is None:
            folder = Path(args.index_dir) if args.index_dir else settings.index_path
            target = LocalWriter(folder, settings)
        print(
            f"ingesting {len(docs)} documents on Ray ({args.actors} embedding actor(s), {batch} per batch) "
            f"through {target.name}",
            flush=True,
        )
        with ack_log(args.ack_log) as acknowledge:
            report = ingest_with_ray(
                docs, settings, target, actors=args.actors, batch_docs=batch, on_commit=acknowledge
            )
        stats = target.stats()
    except RagError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: committed batches are kept; run the same command again to resume", flush=True)
        return 130
    finally:
        if target is not None:
            target.close()
        if started:
            ray.shutdown()
    print(
        f"done: {report.documents} documents in {report.seconds:.1f} s ({report.docs_per_s:.1f} docs/s): "
        f"{report.upserted} new or changed ({report.chunks} chunks), {report.unchanged} unchanged; "
        f"the index holds {stats.get('documents', '?')} documents, {stats.get('chunks', '?')} chunks "
        f"(seq {stats.get('last_seq', '?')})",
        flush=True,
    )
    return 0
