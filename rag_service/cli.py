"""``rag-service`` command line: serve, serve-ray, prepare-models, build-index, calibrate, doctor, ingest,
reindex, compact, env-example."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rag_service.config import MODELS_DIR, Settings, get_settings
from rag_service.generation.model_prep import GENERATORS
from rag_service.runtime.calibration import DEFAULT_RECORD

log = logging.getLogger("rag_service")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from rag_service.api import build_app

    host = args.host or settings.server.host
    port = args.port or settings.server.port
    app = build_app(settings)
    uvicorn.run(app, host=host, port=port, log_level=settings.server.log_level, timeout_graceful_shutdown=10)
    return 0


def cmd_serve_ray(settings: Settings, args: argparse.Namespace) -> int:
    try:
        from rag_service.scaling.launch import serve_ray
    except ImportError as exc:
        print(f"error: {exc}; install the ray extra: pip install -e '.[ray]'", file=sys.stderr, flush=True)
        return 2
    return serve_ray(Path(args.config), port=args.port, num_cpus=args.num_cpus)


def cmd_prepare_models(settings: Settings, args: argparse.Namespace) -> int:
    from rag_service.embedding.encoder import Encoder
    from rag_service.generation.model_prep import prepare_generator, weights_for

    model = Path(settings.generator.model)
    if args.generator:
        folder = MODELS_DIR / args.generator
        prepare_generator(folder, GENERATORS[args.generator], force=args.force)
        if folder.resolve() != model.resolve():
            print(f"to serve it: RAG_GENERATOR__MODEL={folder} (in .env or the environment)", flush=True)
    elif weights_for(model) is not None:
        prepare_generator(model, force=args.force)
    else:
        print(f"generator {str(model)!r} is not one prepare-models makes: nothing to prepare", flush=True)
    encoder = Encoder(settings.encoder)  # loads (and so checks) the encoder weights
    print(f"encoder ready: {encoder.model_id} ({encoder.dimension} dimensions)", flush=True)
    return 0


def cmd_build_index(settings: Settings, args: argparse.Namespace) -> int:
    from rag_service.embedding.encoder import Encoder
    from rag_service.errors import InvalidRequest
    from rag_service.index.snapshot import index_state
    from rag_service.ingestion.build import build_index
    from rag_service.ingestion.corpus import python_reference_topics, read_jsonl

    folder = settings.index_path
    state = index_state(folder)
    if state == "ready" and not args.force:
        print(f"index already built at {folder} (use --force to rebuild)", flush=True)
        return 0
    if state in ("old", "incomplete"):
        print(f"{folder} holds an {state} index (no usable documents database): rebuilding it", flush=True)
    encoder = Encoder(settings.encoder)
    docs = read_jsonl(Path(args.corpus)) if args.corpus else python_reference_topics()
    source = args.corpus or "the built-in Python language reference (pydoc_data.topics)"
    print(f"building index {folder} from {source}", flush=True)
    try:
        report = build_index(docs, encoder, settings, folder)
    except InvalidRequest as exc:
        print(f"error: {exc.message}; nothing was changed", file=sys.stderr, flush=True)
        return 2
    print(
        f"indexed {report.documents} documents as {report.passages} passages in {report.seconds:.1f} s",
        flush=True,
    )
    return 0


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from rag_service.errors import InvalidRequest
    from rag_service.ingestion.corpus import read_paths

    batch = args.batch_size or settings.ingest.batch_docs
    try:
        docs = read_paths([Path(p) for p in args.paths])  # all checked before anything is written
    except InvalidRequest as exc:
        print(f"error: {exc.message}; nothing was ingested", file=sys.stderr, flush=True)
        return 2
    if not docs:
        print("error: no .jsonl, .txt or .md documents found", file=sys.stderr, flush=True)
        return 2
    if args.ray:
        if args.server:
            print("error: --ray and --server do not go together", file=sys.stderr, flush=True)
            return 2
        from rag_service.scaling.ray_ingest import ingest_command

        return ingest_command(settings, args, docs, batch)
    if args.server:
        from rag_service.ingestion.client import ingest_over_http

        return ingest_over_http(args.server, docs, batch, settings)
    return _ingest_directly(settings, args, docs, batch)


def _ingest_directly(settings: Settings, args: argparse.Namespace, docs: list, batch: int) -> int:
    import os

    from rag_service.embedding.encoder import Encoder
    from rag_service.errors import RagError
    from rag_service.ingestion.ingestor import (
        Ingestor,
        ack_log,
        chunker_for,
        ingest_documents,
        open_or_create,
    )

    if settings.ingest.nice:
        os.nice(settings.ingest.nice)  # the whole process: queries of a server beside us come first
    folder = Path(args.index_dir) if args.index_dir else settings.index_path
    encoder = Encoder(settings.encoder)
    try:
        live = open_or_create(folder, encoder, settings)
    except RagError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        return 2
    print(f"ingesting {len(docs)} documents into {folder} ({batch} per batch)", flush=True)
    ingestor = Ingestor(live, encoder, chunker_for(encoder, settings))
    try:
        with ack_log(args.ack_log) as acknowledge:
            report = ingest_documents(ingestor, docs, batch, on_commit=acknowledge)
        stats = live.stats()
    except KeyboardInterrupt:
        print("\ninterrupted: committed batches are kept; run the same command again to resume", flush=True)
        return 130
    finally:
        live.close()
    print(
        f"done: {report.documents} documents in {report.seconds:.1f} s ({report.docs_per_s:.1f} docs/s): "
        f"{report.upserted} new or changed ({report.chunks} chunks), {report.unchanged} unchanged; "
        f"the index holds {stats['documents']} documents, {stats['chunks']} chunks (seq {stats['last_seq']})",
        flush=True,
    )
    return 0


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> int:
    from rag_service.embedding.encoder import Encoder
    from rag_service.errors import RagError
    from rag_service.ingestion.build import build_index, stored_documents

    folder = Path(args.index_dir) if args.index_dir else settings.index_path
    try:
        docs = stored_documents(folder)
    except RagError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        return 2
    encoder = Encoder(settings.encoder)
    print(f"re-embedding {len(docs)} stored documents of {folder} with {encoder.model_id}", flush=True)
    report = build_index(docs, encoder, settings, folder)
    print(
        f"reindexed {report.documents} documents as {report.passages} passages in {report.seconds:.1f} s; "
        "restart the server to load it",
        flush=True,
    )
    return 0


def cmd_compact(settings: Settings, args: argparse.Namespace) -> int:
    from rag_service.storage.store import STORE_FILE, DocumentStore

    folder = Path(args.index_dir) if args.index_dir else settings.index_path
    if not DocumentStore.exists(folder):
        print(f"error: no document store at {folder / STORE_FILE}", file=sys.stderr, flush=True)
        return 2

    def size() -> int:
        return sum(p.stat().st_size for p in folder.glob(f"{STORE_FILE}*") if p.is_file())

    before = size()
    print(f"compacting {folder / STORE_FILE} ({before / 1e6:.1f} MB): rewrites the file once", flush=True)
    store = DocumentStore.open(folder)  # strips tombstones an older version kept whole
    try:
        store.vacuum()
    finally:
        store.close()
    print(f"compacted {folder / STORE_FILE}: {before / 1e6:.1f} MB -> {size() / 1e6:.1f} MB", flush=True)
    return 0


def cmd_calibrate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from rag_service.runtime import calibration, measuring

    env_file = Path(args.env_file)
    if args.if_needed:
        from rag_service.runtime.heavy_imports import import_heavy_libraries

        import_heavy_libraries()
        current = calibration.fingerprint(settings)
        if calibration.calibrated_fingerprint(env_file) == current:
            print(f"budgets already calibrated for this machine and these settings in {env_file}", flush=True)
            return 0
    result, print_id = asyncio.run(measuring.calibrate(settings, singles=args.singles, rounds=args.rounds))
    budgets = settings.budget.as_dict()
    print(f"\n{'stage':<12} {'p50 ms':>9} {'p99 ms':>9} {'proposed':>9} {'in force':>9}", flush=True)
    for stage, proposed in result.proposed_ms.items():
        p50 = result.concurrent["measured_ms"].get(stage, {}).get("p50", 0.0)
        p99 = result.p99_ms.get(stage, 0.0)
        print(f"{stage:<12} {p50:>9.0f} {p99:>9.0f} {proposed:>9.0f} {budgets[stage]:>9.0f}", flush=True)
    print(
        f"(p50 of the {settings.admission.max_in_flight}-at-once rounds, p99 of every answer; "
        f"proposed = {calibration.HEADROOM:g}x p99, see README)",
        flush=True,
    )
    if args.dry_run:
        print("dry run: nothing written", flush=True)
        return 0
    kept = calibration.write_env_block(env_file, result.proposed_ms, calibration.env_header(result, print_id))
    result.kept = kept
    calibration.write_record(Path(args.record), result)
    for stage in kept:
        print(f"kept {calibration.ENV_NAMES[stage]}: set by hand, explicit values win", flush=True)
    print(f"wrote the budgets to {env_file} and the measurements to {args.record}", flush=True)
    return 0


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from rag_service.runtime import doctor

    if args.json:
        print(doctor.report_json(settings), flush=True)
    else:
        sys.stdout.write(doctor.report(settings, args.url))
    return 0


def cmd_env_example(settings: Settings, args: argparse.Namespace) -> int:
    from rag_service.config import render_env_example

    sys.stdout.write(render_env_example())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server (host/port from settings)")
    serve.add_argument("--host", help="override RAG_SERVER__HOST")
    serve.add_argument("--port", type=int, help="override RAG_SERVER__PORT")
    serve.set_defaults(func=cmd_serve)

    ray = sub.add_parser(
        "serve-ray", help="run the Ray Serve application on a local Ray cluster (README, Scaling out)"
    )
    ray.add_argument("--config", default="deploy/serve.yaml", help="Serve config file")
    ray.add_argument("--port", type=int, help="override the config's HTTP port")
    ray.add_argument("--num-cpus", type=int, help="logical CPUs of the local Ray cluster")
    ray.set_defaults(func=cmd_serve_ray)

    prep = sub.add_parser(
        "prepare-models", help="convert the generator weights once (offline), check the encoder"
    )
    prep.add_argument("--force", action="store_true", help="convert again even if the folder is ready")
    prep.add_argument(
        "--generator",
        choices=sorted(GENERATORS),
        help="prepare this generator into models/<name> (default: the configured RAG_GENERATOR__MODEL)",
    )
    prep.set_defaults(func=cmd_prepare_models)

    build = sub.add_parser("build-index", help="build the served index if it is absent")
    build.add_argument("--corpus", help="BEIR-style corpus.jsonl instead of the built-in default corpus")
    build.add_argument("--force", action="store_true", help="rebuild even if the index exists")
    build.set_defaults(func=cmd_build_index)

    cal = sub.add_parser(
        "calibrate",
        help="measure every stage on this machine and write budgets with headroom into .env",
    )
    cal.add_argument("--env-file", default=".env", help="settings file to write the budgets to")
    cal.add_argument("--record", default=str(DEFAULT_RECORD), help="JSON file for the measurements")
    cal.add_argument("--singles", type=int, default=3, help="rounds of one question")
    cal.add_argument("--rounds", type=int, default=3, help="rounds of max_in_flight questions at once")
    cal.add_argument("--if-needed", action="store_true", help="skip when .env holds a calibration of this")
    cal.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    cal.set_defaults(func=cmd_calibrate)

    doc = sub.add_parser("doctor", help="print the machine, the resolved settings and what was measured")
    doc.add_argument("--url", help="also ask a running server what its budget check measured")
    doc.add_argument("--json", action="store_true", help="machine-readable output")
    doc.set_defaults(func=cmd_doctor)

    ingest = sub.add_parser(
        "ingest",
        help="add or replace documents: .jsonl (BEIR {_id,title,text}), .txt/.md files, folders of them",
    )
    ingest.add_argument("paths", nargs="+", help="files or folders")
    ingest.add_argument(
        "--batch-size", type=int, help="documents per committed batch (RAG_INGEST__BATCH_DOCS)"
    )
    ingest.add_argument("--server", help="send batches to a running server (e.g. http://127.0.0.1:8000)")
    ingest.add_argument("--index-dir", help="index folder to write (default: the served index)")
    ingest.add_argument("--ack-log", help="append each committed document id to this file")
    ingest.add_argument(
        "--ray",
        action="store_true",
        help="chunk and embed on a Ray Data actor pool (the ray extra), write through the one writer",
    )
    ingest.add_argument("--actors", type=int, default=1, help="embedding actors with --ray (default 1)")
    ingest.add_argument(
        "--ray-address",
        help="with --ray: join this Ray cluster ('auto': the one running here); default: start a local one "
        "on 127.0.0.1. A Serve application 'rag' running there takes the writes (its Writer deployment), "
        "unless --index-dir names a folder",
    )
    ingest.set_defaults(func=cmd_ingest)

    reindex = sub.add_parser("reindex", help="re-embed the stored documents with the configured encoder")
    reindex.add_argument("--index-dir", help="index folder (default: the served index)")
    reindex.set_defaults(func=cmd_reindex)

    compact = sub.add_parser("compact", help="give the space of deleted chunks back to the disk (VACUUM)")
    compact.add_argument("--index-dir", help="index folder (default: the served index)")
    compact.set_defaults(func=cmd_compact)

    env = sub.add_parser("env-example", help="print every setting as a commented .env file")
    env.set_defaults(func=cmd_env_example)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    _setup_logging(settings.server.log_level)
    if args.command in ("serve", "calibrate"):
        from rag_service.runtime.preload import reexec_with_preload

        reexec_with_preload(settings.generator, sys.argv[1:] if argv is None else argv)
    result: int = args.func(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
