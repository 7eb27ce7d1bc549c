"""Scale-out on Ray Serve beside the single process, on this machine (README, "Scaling out").

    .venv/bin/python -m benchmarks.scale_out [--users 4] [--time 120s] [--docs 128] [--phases all]

Phases, each alone on the machine, every server on a scratch copy of the default index:

1. **single**: ``rag-service serve``; the Locust run of ``make loadtest`` (ChatUser + SearchUser),
   then documents posted to ``/v1/documents`` (the sustained upsert rate: embed + commit + index);
2. **ray**: ``rag-service serve-ray`` (deploy/serve.yaml with exactly two ingress replicas), the same
   Locust run and the same upserts, which now go through an ingress replica to the Writer deployment;
3. **hop**: on a local Ray cluster, one deployment-handle round trip (what moving a stage out of the
   ingress process adds per call), and a question embedded in process versus through a
   ``@serve.batch`` encoder deployment (sequential and 8 at once): the measurement behind keeping the
   encoder in the ingress;
4. **writer**: the writer's own rate for precomputed vectors (``IndexWriter.write_embedded``, what Ray
   Data ingestion feeds it: the serial part no actor pool parallelizes) and the snapshot bundle a new
   replica downloads (bytes per passage: where bundle size limits how fast replicas start).

A 2-core machine cannot show scaling (every replica shares the same two cores): phases 1-2 measure
Ray Serve's overhead, not its capacity. Prints tables and writes benchmarks/results/scale_out.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from tqdm import tqdm

from benchmarks.answers import cpu_name, isa
from benchmarks.retrieval import SHARED
from benchmarks.server import REPO, _wait_ready, free_port, server

RESULTS = REPO / "benchmarks" / "results"
# A streamed completion chunk with text in it (its first chunk may carry an empty text).
NONEMPTY_TEXT = re.compile(r'"text":\s*"(?!")')
PHASES = ("single", "ray", "hop", "writer", "llm")
LLM_RUNS = ("ours", "ray_serve_llm")  # the llm phase's generator deployments
QUESTIONS = [
    "What does the global statement do?",
    "How does a while loop work?",
    "What is a lambda expression?",
    "What happens when a break statement is executed inside a loop?",
    "How are exceptions raised?",
    "What is a generator function?",
    "How is a class defined?",
    "What does the assert statement do?",
]


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else float("nan")


def scifact_docs(n: int) -> list[dict[str, str]]:
    path = SHARED / "scifact" / "corpus.jsonl"
    if not path.is_file():
        raise SystemExit(f"no SciFact corpus at {path}: the upsert phases need ../shared/data")
    docs = []
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            docs.append({"id": f"scale-{row['_id']}", "title": row["title"], "text": row["text"]})
            if len(docs) == n:
                break
    return docs


def scratch_index(root: Path, name: str) -> Path:
    """A copy of indexes/default (the folder holding it is what RAG_INDEX__DIR names)."""
    source = REPO / "indexes" / "default"
    if not source.is_dir() or not any(source.iterdir()):
        raise SystemExit("no built index in indexes/default: run `make run` (or build-index) once")
    folder = root / name
    shutil.copytree(source, folder / "default")
    return folder


# --- phases 1 and 2: the same Locust run, then upserts ------------------------------------------


def locust_run(url: str, reports: Path, users: int, run_time: str) -> dict[str, dict[str, float]]:
    from loadtests.run import main as loadtest

    loadtest(["--url", url, "--users", str(users), "--spawn-rate", str(users), "--time", run_time,
              "--reports", str(reports), "ChatUser", "SearchUser"])  # fmt: skip
    rows: dict[str, dict[str, float]] = {}
    with (reports / "loadtest_stats.csv").open() as f:
        for row in csv.DictReader(f):
            if int(row["Request Count"]) == 0 or row["Name"] == "Aggregated":
                continue
            rows[f"{row['Type']} {row['Name']}"] = {
                "count": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": round(float(row["Requests/s"]), 3),
                "p50_ms": float(row["50%"]),
                "p99_ms": float(row["99%"]),
            }
    summary = json.loads((reports / "summary.json").read_text())
    rows["_summary"] = {k: v for k, v in summary.items() if isinstance(v, int | float)}
    return rows


def upsert_rate(url: str, docs: list[dict[str, str]], batch: int) -> dict[str, float]:
    """POST /v1/documents back to back: what one client sustains through the whole write path."""
    seconds, chunks = [], 0
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in tqdm(range(0, len(docs), batch), desc="upserts", unit="batch"):
            started = time.perf_counter()
            r = client.post("/v1/documents", json={"documents": docs[i : i + batch]})
            seconds.append(time.perf_counter() - started)
            r.raise_for_status()
            chunks += r.json()["chunks"]
        # Delete them again, so the index is as it was for anything run after.
        for doc in docs:
            client.delete(f"/v1/documents/{doc['id']}")
    total = sum(seconds)
    return {
        "docs": len(docs),
        "chunks": chunks,
        "docs_per_s": round(len(docs) / total, 2),
        "chunks_per_s": round(chunks / total, 2),
        "batch_p50_ms": pct([s * 1000 for s in seconds], 50),
        "batch_p99_ms": pct([s * 1000 for s in seconds], 99),
    }


def phase_single(root: Path, args: argparse.Namespace, docs: list[dict[str, str]]) -> dict[str, Any]:
    env = {"RAG_INDEX__DIR": str(scratch_index(root, "single")), "RAG_CACHE__ENABLED": "false"}
    started = time.perf_counter()
    with server(None, root / "single.log", env) as (url, _):
        ready_s = time.perf_counter() - started
        load = locust_run(url, root / "single-locust", args.users, args.time)
        writes = upsert_rate(url, docs, args.batch)
    return {"ready_s": round(ready_s, 1), "locust": load, "upserts": writes}


def serve_config(path: Path, port: int) -> None:
    """deploy/serve.yaml with exactly two ingress replicas (no autoscaling: a stable comparison)."""
    config = copy.deepcopy(yaml.safe_load((REPO / "deploy" / "serve.yaml").read_text()))
    config["http_options"]["port"] = port
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Ingress":
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = 2
    path.write_text(yaml.safe_dump(config))


def phase_ray(root: Path, args: argparse.Namespace, docs: list[dict[str, str]]) -> dict[str, Any]:
    port = free_port()
    config = root / "serve.yaml"
    serve_config(config, port)
    env = {
        **os.environ,
        "RAG_CACHE__ENABLED": "false",
        "RAG_INDEX__DIR": str(scratch_index(root, "ray")),
    }
    url = f"http://127.0.0.1:{port}"
    log_path = root / "ray.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rag_service.cli", "serve-ray", "--config", str(config), "--num-cpus",
             str(os.cpu_count() or 2)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_ready(url, proc, log_path)
        ready_s = time.perf_counter() - started
        load = locust_run(url, root / "ray-locust", args.users, args.time)
        writes = upsert_rate(url, docs, args.batch)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"ready_s": round(ready_s, 1), "ingress_replicas": 2, "locust": load, "upserts": writes}


# --- phase 3: one handle hop, and the encoder in process or as a deployment -------------------------


def phase_hop(rounds: int) -> dict[str, Any]:
    from ray import serve

    from rag_service.config import Settings
    from rag_service.embedding.encoder import Encoder
    from rag_service.scaling.launch import LOCAL_ADDRESS, start_local_cluster

    encoder_settings = Settings().encoder.model_copy(update={"num_threads": 1})  # as in the ingress

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    class Echo:
        def echo(self, value: str) -> str:
            return value

    @serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
    class BatchedEncoder:
        def __init__(self) -> None:
            self.encoder = Encoder(encoder_settings)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
        async def embed(self, questions: list[str]) -> list[np.ndarray]:
            return list(self.encoder.encode_queries(questions))

    start_local_cluster(os.cpu_count() or 2)
    try:
        serve.start(http_options={"host": LOCAL_ADDRESS, "port": free_port()})
        echo = serve.run(Echo.bind(), name="echo", route_prefix=None)  # type: ignore[attr-defined]
        remote_encoder = serve.run(BatchedEncoder.bind(), name="encoder", route_prefix=None)  # type: ignore[attr-defined]

        def timed_ms(call: Any) -> float:
            started = time.perf_counter()
            call()
            return (time.perf_counter() - started) * 1000

        for _ in range(20):  # warm: connections, the replica's first calls
            echo.echo.remote("x").result()
            remote_encoder.embed.remote(QUESTIONS[0]).result()
        hop = [timed_ms(lambda: echo.echo.remote("x").result()) for _ in tqdm(range(rounds), desc="hop")]
        remote_seq = [
            timed_ms(lambda i=i: remote_encoder.embed.remote(QUESTIONS[i % 8]).result())
            for i in tqdm(range(rounds), desc="remote embed")
        ]

        async def concurrent(n: int) -> list[float]:
            async def one(i: int) -> float:
                started = time.perf_counter()
                await remote_encoder.embed.remote(QUESTIONS[i % 8])
                return (time.perf_counter() - started) * 1000

            out: list[float] = []
            for _ in range(rounds // n):
                out += await asyncio.gather(*(one(i) for i in range(n)))
            return out

        remote_conc = asyncio.run(concurrent(8))
        serve.delete("encoder")  # its CPU back before the in-process figures
        serve.delete("echo")
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()

    import torch

    torch.set_num_threads(1)
    encoder = Encoder(encoder_settings)
    for _ in range(20):
        encoder.encode_queries([QUESTIONS[0]])
    local_seq = [
        timed_ms(lambda i=i: encoder.encode_queries([QUESTIONS[i % 8]]))
        for i in tqdm(range(rounds), desc="local embed")
    ]
    # 8 at once in process = one micro-batch of 8 (what the QueryBatcher does); each waits for the batch.
    local_batch = [timed_ms(lambda: encoder.encode_queries(QUESTIONS)) for _ in range(rounds // 8)]
    row = lambda v: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "n": len(v)}  # noqa: E731
    return {
        "handle_round_trip": row(hop),
        "embed_in_process_one": row(local_seq),
        "embed_deployment_one": row(remote_seq),
        "embed_in_process_8_at_once": row(local_batch),
        "embed_deployment_8_at_once": row(remote_conc),
    }


# --- phase 5: the generator deployment: our vLLM adapter or ray.serve.llm ---------------------------


def rag_prompts(tokenizer: Any, n: int) -> list[str]:
    """RAG-sized prompts (a SciFact abstract as context), each different: no prefix-cache hits."""
    docs = scifact_docs(n + 1)
    prompts = []
    for i in range(n + 1):
        question = QUESTIONS[i % len(QUESTIONS)]
        content = f"Context:\n{docs[i]['title']}. {docs[i]['text']}\n\nQuestion: {question}"
        messages = [{"role": "user", "content": content}]
        prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return prompts


def _has_text(batch: Any) -> bool:
    return NONEMPTY_TEXT.search(str(batch)) is not None


async def _timed_stream(stream: Any, has_text: Any) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    async for item in stream:
        if first is None and has_text(item):
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    return (first if first is not None else total) * 1000, total * 1000


def phase_llm(prompts_n: int, max_tokens: int, order: tuple[str, ...]) -> dict[str, Any]:
    """The same prompts, one at a time, through each generator deployment's handle (streamed), the
    deployments one after the other in ``order`` (the first one also meets a colder machine)."""
    import uuid

    from ray import serve
    from ray.serve.llm import LLMConfig, build_llm_deployment
    from ray.serve.llm.openai_api_models import CompletionRequest
    from transformers import AutoTokenizer

    from rag_service.config import Settings
    from rag_service.generation.generator import configure_vllm_environment
    from rag_service.runtime.hardware import cpu_features, cuda_bf16, cuda_devices, generator_dtype
    from rag_service.runtime.preload import wanted
    from rag_service.scaling.launch import LOCAL_ADDRESS, start_local_cluster
    from rag_service.scaling.serve_app import GeneratorDeployment, settings_payload

    settings = Settings()
    gen = settings.generator
    tokenizer = AutoTokenizer.from_pretrained(gen.model)
    prompts = rag_prompts(tokenizer, prompts_n)
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    dtype = generator_dtype(gen.dtype, gpus=cuda_devices(), gpu_bf16=cuda_bf16(), cpu=cpu_features()).dtype
    configure_vllm_environment(gen)  # the variables it sets, handed to ray.serve.llm's replica too
    env_vars = {k: os.environ[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")}
    if libraries := wanted(gen):
        env_vars["LD_PRELOAD"] = ":".join(libraries)
    results: dict[str, Any] = {"model": gen.model, "dtype": dtype, "max_tokens": max_tokens}
    results["prompt_tokens_p50"] = pct([float(t) for t in prompt_tokens], 50)

    def summary(runs: list[tuple[float, float]], start_s: float) -> dict[str, float]:
        ttft, total = [r[0] for r in runs], [r[1] for r in runs]
        return {"ready_s": round(start_s, 1), "ttft_p50_ms": pct(ttft, 50), "ttft_max_ms": pct(ttft, 100),
                "total_p50_ms": pct(total, 50), "total_max_ms": pct(total, 100), "n": len(runs)}  # fmt: skip

    async def run_ours(handle: Any) -> list[tuple[float, float]]:
        runs = []
        for text in tqdm(prompts, desc="our adapter"):
            ids = tokenizer(text, add_special_tokens=False).input_ids
            stream = handle.options(stream=True).stream.remote(
                ids, max_tokens=max_tokens, temperature=0.0, stop=[], request_id=uuid.uuid4().hex
            )
            runs.append(await _timed_stream(stream, lambda chunk: bool(chunk.text)))
        return runs[1:]  # the first prompt warms the path

    async def run_theirs(handle: Any) -> list[tuple[float, float]]:
        runs = []
        for text in tqdm(prompts, desc="ray.serve.llm"):
            request = CompletionRequest(
                model="rag-generator", prompt=text, max_tokens=max_tokens, temperature=0.0, stream=True
            )
            stream = handle.options(stream=True).completions.remote(request)
            runs.append(await _timed_stream(stream, _has_text))
        return runs[1:]

    def ours() -> dict[str, float]:
        # The Generator deployment of serve_app.py, as deploy/serve.yaml sizes it.
        started = time.perf_counter()
        actor = {"num_cpus": 0.5, "runtime_env": {"env_vars": env_vars}}
        deployment = GeneratorDeployment.options(ray_actor_options=actor)  # type: ignore[attr-defined]
        handle = serve.run(deployment.bind(settings_payload(settings)), name="ours", route_prefix=None)
        start_s = time.perf_counter() - started
        figures = summary(asyncio.run(run_ours(handle)), start_s)
        serve.delete("ours")
        return figures

    def theirs() -> dict[str, float]:
        config = LLMConfig(
            model_loading_config={"model_id": "rag-generator", "model_source": gen.model},
            accelerator_config={"kind": "cpu"},
            # One CPU bundle and a fractional replica: the default bundle takes every CPU of a 2-core
            # machine and nothing else schedules (ray issues #59764, #63036).
            placement_group_config={"bundles": [{"CPU": 1}]},
            deployment_config={"ray_actor_options": {"num_cpus": 0.5}, "num_replicas": 1},
            engine_kwargs={
                "dtype": dtype, "max_model_len": gen.max_model_len, "enforce_eager": gen.enforce_eager
            },
            runtime_env={"env_vars": env_vars},
        )  # fmt: skip
        started = time.perf_counter()
        handle = serve.run(build_llm_deployment(config), name="serve-llm", route_prefix=None)
        start_s = time.perf_counter() - started
        figures = summary(asyncio.run(run_theirs(handle)), start_s)
        serve.delete("serve-llm")
        return figures

    runners = dict(zip(LLM_RUNS, (ours, theirs), strict=True))
    results["order"] = list(order)
    start_local_cluster(os.cpu_count() or 2)
    try:
        serve.start(http_options={"host": LOCAL_ADDRESS, "port": free_port()})
        for n, name in enumerate(order):
            # A name given twice: its second run is kept as name#2 (the first met a colder machine).
            key = f"{name}#{order[:n].count(name) + 1}" if name in order[:n] else name
            results[key] = runners[name]()
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    return results


# --- phase 4: the writer's serial rate and the bundle size -------------------------------------------


def phase_writer(root: Path, docs: list[dict[str, str]], batch: int) -> dict[str, Any]:
    from rag_service.config import Settings
    from rag_service.domain import Document
    from rag_service.embedding.encoder import Encoder
    from rag_service.ingestion.ingestor import chunker_for, embedding_text
    from rag_service.scaling.writer import EmbeddedDocument, IndexWriter

    folder = scratch_index(root, "writer")
    settings = Settings(index={"dir": folder})
    encoder = Encoder(settings.encoder)
    chunker = chunker_for(encoder, settings)
    items = []
    for d in tqdm(docs, desc="embedding (not timed)"):
        doc = Document(id=d["id"], title=d["title"], text=d["text"])
        chunks = chunker.split(doc.text)
        vectors = encoder.encode_passages([embedding_text(doc.title, c) for c in chunks])
        items.append(EmbeddedDocument(doc, chunks, vectors))
    writer = IndexWriter.open(settings, encoder.index_spec())
    spec = writer.spec()
    seconds = []
    try:
        for i in tqdm(range(0, len(items), batch), desc="write_embedded", unit="batch"):
            started = time.perf_counter()
            asyncio.run(writer.write_embedded(spec, items[i : i + batch]))
            seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        bundle = asyncio.run(writer.bundle())
        bundle_s = time.perf_counter() - started
        passages = int(writer.stats()["passages"])
    finally:
        writer.close()
    n_chunks = sum(len(item.chunks) for item in items)
    total = sum(seconds)
    return {
        "docs": len(items),
        "chunks": n_chunks,
        "docs_per_s": round(len(items) / total, 1),
        "chunks_per_s": round(n_chunks / total, 1),
        "bundle_mb": round(len(bundle) / 1e6, 2),
        "bundle_s": round(bundle_s, 2),
        "passages": passages,
        "bundle_bytes_per_passage": round(len(bundle) / passages) if passages else None,
    }


# --- report ------------------------------------------------------------------------------------------


def print_report(out: dict[str, Any]) -> None:
    print(f"\n{out['machine']['cpu']} ({out['machine']['isa']}), {out['machine']['cores']} cores")
    single, ray_ = out.get("single"), out.get("ray")
    if single and ray_:
        print(f"\nready after: single {single['ready_s']} s, Ray Serve {ray_['ready_s']} s")
        header = f"{'single p50/p99 ms':>20}{'Ray p50/p99 ms':>20}{'ratio p50/p99':>16}{'n s/r':>10}"
        print(f"{'request':<42}{header}")
        for name, s in single["locust"].items():
            r = ray_["locust"].get(name)
            if name.startswith("_") or not r:
                continue
            ratio = f"{r['p50_ms'] / s['p50_ms']:.2f}/{r['p99_ms'] / s['p99_ms']:.2f}" if s["p50_ms"] else "-"
            print(f"{name:<42}{s['p50_ms']:>9.0f}/{s['p99_ms']:<10.0f}{r['p50_ms']:>9.0f}/{r['p99_ms']:<10.0f}"
                  f"{ratio:>16}{s['count']:>5}/{r['count']}")  # fmt: skip
        for mode, data in (("single", single), ("Ray Serve", ray_)):
            u = data["upserts"]
            print(f"upserts via HTTP, {mode}: {u['docs_per_s']} docs/s, {u['chunks_per_s']} chunks/s "
                  f"(batch p50 {u['batch_p50_ms']} ms)")  # fmt: skip
    if hop := out.get("hop"):
        print("\nper call (ms)                     p50      p99")
        for name, v in hop.items():
            print(f"{name:<30}{v['p50_ms']:>8}{v['p99_ms']:>9}")
    if llm := out.get("llm"):
        print(f"\ngenerator deployments, {llm['model']} ({llm['dtype']}), {llm['prompt_tokens_p50']}-token "
              f"prompts, {llm['max_tokens']} new tokens, one at a time:")  # fmt: skip
        for name in [k for k in llm if k.split("#")[0] in LLM_RUNS]:  # in the order they ran
            v = llm[name]
            print(f"  {name:<17} ready {v.get('ready_s')} s, first token p50 {v.get('ttft_p50_ms')} ms "
                  f"(max {v.get('ttft_max_ms')}), whole answer p50 {v.get('total_p50_ms')} ms")  # fmt: skip
    if writer := out.get("writer"):
        print(f"\nwriter, precomputed vectors: {writer['docs_per_s']} docs/s, "
              f"{writer['chunks_per_s']} chunks/s; "
              f"bundle {writer['bundle_mb']} MB for {writer['passages']} passages "
              f"({writer['bundle_bytes_per_passage']} B each) in {writer['bundle_s']} s")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=4, help="Locust users (ChatUser + SearchUser)")
    parser.add_argument("--time", default="120s", help="Locust run time per mode")
    parser.add_argument("--docs", type=int, default=128, help="SciFact documents upserted per mode")
    parser.add_argument("--batch", type=int, default=16, help="documents per upsert")
    parser.add_argument("--rounds", type=int, default=400, help="calls per figure of the hop phase")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per generator (llm phase)")
    parser.add_argument(
        "--llm-order",
        default="ours,ray_serve_llm",
        help="llm phase: the generator deployments in the order they run (a name twice runs it twice)",
    )
    parser.add_argument("--phases", default="all", help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale_out.json")
    args = parser.parse_args()
    phases = PHASES if args.phases == "all" else tuple(args.phases.split(","))
    llm_order = tuple(args.llm_order.split(","))
    if unknown := set(llm_order) - set(LLM_RUNS):
        parser.error(f"--llm-order: unknown {', '.join(sorted(unknown))}")
    docs = scifact_docs(args.docs)
    out: dict[str, Any] = {
        "machine": {
            "cpu": cpu_name(),
            "isa": isa(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "settings": {"users": args.users, "time": args.time, "docs": args.docs, "batch": args.batch},
    }
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        root = Path(tmp)
        if "single" in phases:
            out["single"] = phase_single(root, args, docs)
        if "ray" in phases:
            out["ray"] = phase_ray(root, args, docs)
        if "hop" in phases:
            out["hop"] = phase_hop(args.rounds)
        if "llm" in phases:
            out["llm"] = phase_llm(args.prompts, 32, llm_order)
        if "writer" in phases:
            out["writer"] = phase_writer(root, scifact_docs(2 * args.docs), 32)
        logs = RESULTS / "scale_out_logs"
        logs.mkdir(parents=True, exist_ok=True)
        for log in root.glob("*.log"):
            shutil.copy(log, logs / log.name)
    print_report(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
