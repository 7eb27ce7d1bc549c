"""``rag-service`` command line: serve, prepare-models, build-index."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rag_service.config import DEFAULT_GENERATOR, Settings, get_settings

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


def cmd_prepare_models(settings: Settings, args: argparse.Namespace) -> int:
    from rag_service.encoder import Encoder
    from rag_service.model_prep import prepare_generator

    model = settings.generator.model
    if Path(model).resolve() == Path(DEFAULT_GENERATOR).resolve():
        prepare_generator(Path(model), force=args.force)
    else:
        print(f"generator {model!r} is not the built-in SmolLM2 folder: nothing to prepare", flush=True)
    encoder = Encoder(settings.encoder)  # loads (and so checks) the encoder weights
    print(f"encoder ready: {encoder.model_id} ({encoder.dimension} dimensions)", flush=True)
    return 0


def cmd_build_index(settings: Settings, args: argparse.Namespace) -> int:
    from rag_service.chunking import Chunker
    from rag_service.corpus import python_reference_topics, read_jsonl
    from rag_service.encoder import Encoder
    from rag_service.index import MANIFEST_FILE
    from rag_service.ingest import build_index

    folder = settings.index_path
    if (folder / MANIFEST_FILE).is_file() and not args.force:
        print(f"index already built at {folder} (use --force to rebuild)", flush=True)
        return 0
    encoder = Encoder(settings.encoder)
    chunker = Chunker(encoder.tokenizer, settings.chunking.chunk_tokens, settings.chunking.overlap_tokens)
    docs = read_jsonl(Path(args.corpus)) if args.corpus else python_reference_topics()
    source = args.corpus or "the built-in Python language reference (pydoc_data.topics)"
    print(f"building index {folder} from {source}", flush=True)
    report = build_index(docs, encoder, chunker, settings.index, folder)
    print(
        f"indexed {report.documents} documents as {report.passages} passages in {report.seconds:.1f} s",
        flush=True,
    )
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

    prep = sub.add_parser(
        "prepare-models", help="convert the generator weights once (offline), check the encoder"
    )
    prep.add_argument("--force", action="store_true", help="convert again even if the folder is ready")
    prep.set_defaults(func=cmd_prepare_models)

    build = sub.add_parser("build-index", help="build the served index if it is absent")
    build.add_argument("--corpus", help="BEIR-style corpus.jsonl instead of the built-in default corpus")
    build.add_argument("--force", action="store_true", help="rebuild even if the index exists")
    build.set_defaults(func=cmd_build_index)

    env = sub.add_parser("env-example", help="print every setting as a commented .env file")
    env.set_defaults(func=cmd_env_example)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    _setup_logging(settings.server.log_level)
    result: int = args.func(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
