"""Answer quality through the service: are the answers right, not only fast?

Asks real questions through ``/v1/ask`` of a server started with the generator under test
(``--generator``, a prepared folder) on the shared evaluation data (``../shared/data``):

- **SQuAD v1.1 dev** (its 2,067 paragraphs indexed): exact match, token F1 and "answer contains a gold
  span", all with SQuAD's own normalization (lower case, no punctuation, no articles); whether the gold
  paragraph is among the sources; how often the service said "not in the documents" (wrongly: these
  are answerable);
- two baselines in the same run: **no retrieval** (the same questions as plain chat,
  ``/v1/chat/completions`` with ``rag.retrieval: false``) and the **extractive upper bound** (a gold
  span is in the packed passages, so an answer could have quoted it);
- the **extractive path** the README proposes as the next lever, scored the same way: the sentence of
  the packed passages nearest the question by the service's own encoder (``/v1/embeddings``);
- **abstention**: other SQuAD questions after their gold paragraph was deleted from the server's copy
  of the index: how often the answer is ``grounded: false`` (right), and how often it still contains
  a gold span (found elsewhere);
- **PubMedQA** (PQA-L, its 1,000 abstracts indexed): yes/no/maybe accuracy. The question is sent with
  " Answer yes, no or maybe." appended; the label is the first of the words yes, no, maybe in the
  answer (none: counted wrong);
- **citations**: answers naming a source as ``[n]`` (the prompt numbers the passages), and how often
  a cited source contains the gold span;
- latency p50/p99 with every figure, and a run at ``--concurrency`` parallel requests.

Budgets are lifted (the figures are quality, and latency as it is); the default's own calibrated
budgets are what ``rag-service calibrate`` measures. Run it alone: nothing else on the machine.

    python -m benchmarks.answers --generator models/qwen2.5-coder-0.5b-instruct --label qwen-0.5b
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import shutil
import string
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from benchmarks.retrieval import SHARED, build_index, spread
from benchmarks.server import REPO, server
from rag_service.config import GeneratorSettings

RESULTS = REPO / "benchmarks" / "results" / "answers"
LIFTED = {
    "RAG_BUDGET__EMBED_MS": "5000",
    "RAG_BUDGET__RETRIEVE_MS": "5000",
    "RAG_BUDGET__FIRST_TOKEN_MS": "120000",
    "RAG_BUDGET__GENERATE_MS": "240000",
    "RAG_BUDGET__TOTAL_MS": "300000",
}
PUBMED_SUFFIX = " Answer yes, no or maybe."
CITATION = re.compile(r"\[(\d{1,2})\]")


# --- SQuAD's official normalization and scores (evaluate-v1.1.py) ---


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    best = 0.0
    predicted = normalize_answer(prediction).split()
    for gold in golds:
        truth = normalize_answer(gold).split()
        common = sum((Counter(predicted) & Counter(truth)).values())
        if common:
            precision, recall = common / len(predicted), common / len(truth)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains_gold(text: str, golds: Sequence[str]) -> bool:
    said = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(g)} " in said for g in golds if normalize_answer(g))


def pubmed_label(answer: str) -> str:
    for word in normalize_answer(answer).split():
        if word in ("yes", "no", "maybe"):
            return word
    return "none"


def cited_numbers(answer: str, sources: int) -> list[int]:
    return sorted({int(n) for n in CITATION.findall(answer) if 1 <= int(n) <= sources})


# --- requests ---


def ask(client: httpx.Client, question: str) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    r = client.post("/v1/ask", json={"question": question})
    took = time.perf_counter() - started
    r.raise_for_status()
    return r.json(), took


def plain_chat(client: httpx.Client, question: str) -> tuple[str, float]:
    model = client.get("/v1/models").json()["data"][0]["id"]  # the generator comes first
    started = time.perf_counter()
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "rag": {"retrieval": False},
        },
    )
    took = time.perf_counter() - started
    r.raise_for_status()
    return str(r.json()["choices"][0]["message"]["content"]), took


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    return [part.strip() for part in SENTENCE_END.split(text) if len(part.split()) >= 3]


def best_sentence(client: httpx.Client, encoder: str, question: str, sources: list[dict[str, Any]]) -> str:
    """The extractive answer path measured as the next lever: the sentence of the packed passages whose
    MiniLM vector (the service's own encoder, via /v1/embeddings) is nearest the question's."""
    candidates = [sent for source in sources for sent in sentences(source["text"])]
    if not candidates:
        return ""
    r = client.post("/v1/embeddings", json={"model": encoder, "input": [question, *candidates]})
    r.raise_for_status()
    vectors = np.array([item["embedding"] for item in r.json()["data"]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return candidates[int(np.argmax(vectors[1:] @ vectors[0]))]


def latency(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "p50_s": round(float(np.percentile(seconds, 50)), 3),
        "p99_s": round(float(np.percentile(seconds, 99)), 3),
        "mean_s": round(float(np.mean(seconds)), 3),
    }


def share(flags: Sequence[bool | float]) -> float:
    return round(float(np.mean(flags)), 4) if flags else float("nan")


def squad_rows(
    n_answerable: int, n_abstain: int, n_fresh: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Answerable questions spread over the split; abstention questions whose gold paragraphs are none
    of the answerable ones' (they are deleted before the abstention questions are asked); and fresh
    questions for the concurrent run, asked nowhere else (a repeated prompt would be served from
    vLLM's prefix cache)."""
    rows = [json.loads(line) for line in (SHARED / "squad-v1.1-dev" / "qa.jsonl").open() if line.strip()]
    answerable = spread(rows, n_answerable)
    used = {d for r in answerable for d in r["doc_ids"]}
    rest = [r for r in rows if not used & set(r["doc_ids"])]
    # One question per paragraph: deleting a paragraph then removes the answer of exactly one question.
    one_each = list({r["doc_ids"][0]: r for r in rest}.values())
    abstain = spread(one_each, n_abstain) if n_abstain else []
    taken = {r["id"] for r in abstain}
    fresh = spread([r for r in rest if r["id"] not in taken][1::2], n_fresh) if n_fresh else []
    return answerable, abstain, fresh


def run_squad(client: httpx.Client, rows: list[dict[str, Any]], *, baseline: bool) -> dict[str, Any]:
    records = []
    encoder = client.get("/v1/models").json()["data"][-1]["id"]  # the generator first, the encoder last
    for row in tqdm(rows, desc="SQuAD /v1/ask", unit="q"):
        body, took = ask(client, row["question"])
        sources = body["sources"]
        context = " ".join(s["text"] for s in sources)
        cited = cited_numbers(body["answer"], len(sources))
        quote = best_sentence(client, encoder, row["question"], sources)
        records.append(
            {
                "id": row["id"],
                "question": row["question"],
                "answers": row["answers"],
                "answer": body["answer"],
                "seconds": took,
                "em": exact_match(body["answer"], row["answers"]),
                "f1": token_f1(body["answer"], row["answers"]),
                "contains": contains_gold(body["answer"], row["answers"]),
                "gold_source": bool(set(row["doc_ids"]) & {s["doc_id"] for s in sources}),
                "span_in_context": contains_gold(context, row["answers"]),
                "abstained": body["grounded"] is False,
                "grounded_reason": body["grounded_reason"],
                "cited": cited,
                "cited_right": any(contains_gold(sources[n - 1]["text"], row["answers"]) for n in cited),
                "degraded": body["degraded"],
                "extractive": quote,
                "extractive_em": exact_match(quote, row["answers"]),
                "extractive_f1": token_f1(quote, row["answers"]),
                "extractive_contains": contains_gold(quote, row["answers"]),
            }
        )
    summary = summarize(records)
    summary["extractive_sentence"] = {
        "em": share([r["extractive_em"] for r in records]),
        "f1": share([r["extractive_f1"] for r in records]),
        "contains": share([r["extractive_contains"] for r in records]),
    }
    if baseline:
        plain = []
        for record in tqdm(records, desc="SQuAD plain chat (no retrieval)", unit="q"):
            text, took = plain_chat(client, record["question"])
            record["plain_answer"] = text
            plain.append((text, took, record["answers"]))
        summary["no_retrieval"] = {
            "em": share([exact_match(t, a) for t, _, a in plain]),
            "f1": share([token_f1(t, a) for t, _, a in plain]),
            "contains": share([contains_gold(t, a) for t, _, a in plain]),
            "latency": latency([s for _, s, _ in plain]),
        }
    return {"summary": summary, "records": records}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    cited = [r for r in records if r["cited"]]
    return {
        "questions": len(records),
        "em": share([r["em"] for r in records]),
        "f1": share([r["f1"] for r in records]),
        "contains": share([r["contains"] for r in records]),
        "gold_source": share([r["gold_source"] for r in records]),
        "extractive_upper_bound": share([r["span_in_context"] for r in records]),
        "false_abstain": share([r["abstained"] for r in records]),
        "citing": share([bool(r["cited"]) for r in records]),
        "citation_right": share([r["cited_right"] for r in cited]) if cited else None,
        "degraded": int(sum(r["degraded"] for r in records)),
        "latency": latency([r["seconds"] for r in records]),
    }


def run_abstain(client: httpx.Client, rows: list[dict[str, Any]]) -> dict[str, Any]:
    for doc_id in sorted({d for r in rows for d in r["doc_ids"]}):
        r = client.delete(f"/v1/documents/{doc_id}")
        if r.status_code not in (200, 204):
            raise SystemExit(f"could not delete {doc_id}: {r.status_code} {r.text}")
    time.sleep(2)  # deletes are applied at once; a margin for the index's background work
    records = []
    for row in tqdm(rows, desc="SQuAD without its gold paragraph", unit="q"):
        body, took = ask(client, row["question"])
        found = {s["doc_id"] for s in body["sources"]}
        if set(row["doc_ids"]) & found:
            raise SystemExit(f"{row['doc_ids']} was deleted but is still a source")
        records.append(
            {
                "id": row["id"],
                "question": row["question"],
                "answers": row["answers"],
                "answer": body["answer"],
                "seconds": took,
                "abstained": body["grounded"] is False,
                "grounded_reason": body["grounded_reason"],
                "contains": contains_gold(body["answer"], row["answers"]),
            }
        )
    summary = {
        "questions": len(records),
        "abstain": share([r["abstained"] for r in records]),
        "contains_anyway": share([r["contains"] for r in records]),
        "latency": latency([r["seconds"] for r in records]),
    }
    return {"summary": summary, "records": records}


def run_pubmed(client: httpx.Client, n: int) -> dict[str, Any]:
    rows = [json.loads(line) for line in (SHARED / "pubmedqa-pqal" / "qa.jsonl").open() if line.strip()]
    records = []
    for row in tqdm(spread(rows, n), desc="PubMedQA /v1/ask", unit="q"):
        body, took = ask(client, row["question"] + PUBMED_SUFFIX)
        label = pubmed_label(body["answer"])
        records.append(
            {
                "id": row["id"],
                "question": row["question"],
                "gold": row["answers"][0],
                "answer": body["answer"],
                "label": label,
                "right": label == row["answers"][0],
                "gold_source": bool(set(row["doc_ids"]) & {s["doc_id"] for s in body["sources"]}),
                "seconds": took,
            }
        )
    summary = {
        "questions": len(records),
        "accuracy": share([r["right"] for r in records]),
        "unreadable": share([r["label"] == "none" for r in records]),
        "gold_source": share([r["gold_source"] for r in records]),
        "majority_label_share": share([r["gold"] == "yes" for r in records]),  # always-"yes" baseline
        "latency": latency([r["seconds"] for r in records]),
    }
    return {"summary": summary, "records": records}


async def concurrent_run(url: str, questions: list[str], concurrency: int) -> dict[str, Any]:
    seconds: list[float] = []
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(question: str) -> None:
            async with limit:
                started = time.perf_counter()
                r = await client.post("/v1/ask", json={"question": question})
                r.raise_for_status()
                seconds.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(q) for q in questions))
        wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(questions),
        "answers_per_s": round(len(questions) / wall, 3),
        "latency": latency(seconds),
    }


def corpus_subset(corpus: Path, rows: list[dict[str, Any]], max_docs: int, out: Path) -> Path:
    """The paragraphs the questions need (their gold ones) and others in corpus order up to
    ``max_docs``: a smaller index for smoke runs, still with distractors around every gold paragraph.
    The file's name carries a hash of its paragraphs, so an index cached for other questions is not reused."""
    needed = {d for r in rows for d in r["doc_ids"]}
    lines = [line for line in corpus.read_text().splitlines() if line.strip()]
    gold = [json.loads(line)["_id"] in needed for line in lines]
    keep = [line for line, g in zip(lines, gold, strict=True) if g]
    keep += [line for line, g in zip(lines, gold, strict=True) if not g][: max(0, max_docs - len(keep))]
    text = "\n".join(keep) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    subset = out / f"{corpus.parent.name}-{max_docs}-{digest}.jsonl"
    subset.write_text(text)
    return subset


def copy_index(source: Path, dest: Path) -> Path:
    """A throwaway copy of a cached index: the abstention run deletes documents from it."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest)
    return dest


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def isa() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    names = ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"]
    return "+".join(n for n in names if n in flags) or "no AVX2"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--generator",
        default=GeneratorSettings().model,
        help="prepared model folder (default: the configured one, auto resolved on this machine)",
    )
    parser.add_argument("--label", help="name of this run (default: the generator folder's name)")
    parser.add_argument("--squad", type=int, default=60, help="answerable SQuAD questions")
    parser.add_argument("--abstain", type=int, default=30, help="SQuAD questions without their paragraph")
    parser.add_argument("--pubmed", type=int, default=40, help="PubMedQA questions (0: skip)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--concurrent-requests", type=int, default=16)
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain-chat baseline")
    parser.add_argument("--system-prompt", help="RAG_GENERATOR__SYSTEM_PROMPT for this run")
    parser.add_argument(
        "--max-docs",
        type=int,
        help="index only the questions' own paragraphs plus others up to this many (default: all 2,067)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    for name in ("squad-v1.1-dev", "pubmedqa-pqal"):
        if not (SHARED / name / "qa.jsonl").is_file():
            print(f"no {name} at {SHARED}: the answer benchmark needs ../shared/data", file=sys.stderr)
            return 2
    label = args.label or Path(args.generator).name
    out = args.out / label
    out.mkdir(parents=True, exist_ok=True)
    index_dir = args.out / "indexes"
    work = args.out / "work"
    env = {**LIFTED, "RAG_GENERATOR__MODEL": str(Path(args.generator).resolve())}
    if args.system_prompt:
        env["RAG_GENERATOR__SYSTEM_PROMPT"] = args.system_prompt
    result: dict[str, Any] = {
        "label": label,
        "generator": args.generator,
        "system_prompt": args.system_prompt,
        "cpu": cpu_name(),
        "isa": isa(),
        "cpus": len(os.sched_getaffinity(0)),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    answerable, abstain, fresh = squad_rows(args.squad, args.abstain, args.concurrent_requests)

    squad_name, squad_corpus = "squad-v1.1-dev", SHARED / "squad-v1.1-dev" / "corpus.jsonl"
    if args.max_docs:
        squad_corpus = corpus_subset(squad_corpus, answerable + abstain + fresh, args.max_docs, args.out)
        squad_name = squad_corpus.stem
    build_index(squad_name, squad_corpus, index_dir)
    copy_index(index_dir / squad_name, work / squad_name)
    squad_env = {**env, "RAG_INDEX__DIR": str(work), "RAG_INDEX__NAME": squad_name}
    with (
        server(None, out / "server-squad.log", squad_env) as (url, _),
        httpx.Client(base_url=url, timeout=600) as client,
    ):
        squad = run_squad(client, answerable, baseline=not args.no_baseline)
        questions = [r["question"] for r in fresh]
        result["concurrent"] = asyncio.run(concurrent_run(url, questions, args.concurrency))
        result["abstain"] = run_abstain(client, abstain) if abstain else None
    result["squad"] = squad
    if args.pubmed:
        build_index("pubmedqa-pqal", SHARED / "pubmedqa-pqal" / "corpus.jsonl", index_dir)
        pubmed_env = {**env, "RAG_INDEX__DIR": str(index_dir), "RAG_INDEX__NAME": "pubmedqa-pqal"}
        with (
            server(None, out / "server-pubmed.log", pubmed_env) as (url, _),
            httpx.Client(base_url=url, timeout=600) as client,
        ):
            result["pubmed"] = run_pubmed(client, args.pubmed)
    (out / "answers.json").write_text(json.dumps(result, indent=2))
    report(result)
    print(f"\nwritten to {out / 'answers.json'}")
    return 0


def report(result: dict[str, Any]) -> None:
    s = result["squad"]["summary"]
    print(f"\n{result['label']} on {result['cpu']} ({result['isa']}, {result['cpus']} CPUs)")
    print(
        f"{'SQuAD v1.1 dev':<34} {'n':>4} {'EM':>6} {'F1':>6} {'gold in answer':>15} "
        f"{'p50 s':>7} {'p99 s':>7}"
    )
    print(
        f"{'service /v1/ask':<34} {s['questions']:>4} {s['em']:>6.3f} {s['f1']:>6.3f} {s['contains']:>15.3f} "
        f"{s['latency']['p50_s']:>7.2f} {s['latency']['p99_s']:>7.2f}"
    )
    if "no_retrieval" in s:
        b = s["no_retrieval"]
        print(
            f"{'no retrieval (plain chat)':<34} {s['questions']:>4} {b['em']:>6.3f} {b['f1']:>6.3f} "
            f"{b['contains']:>15.3f} {b['latency']['p50_s']:>7.2f} {b['latency']['p99_s']:>7.2f}"
        )
    if "extractive_sentence" in s:
        x = s["extractive_sentence"]
        print(
            f"{'extractive: nearest sentence (MiniLM)':<34} {s['questions']:>4} {x['em']:>6.3f} "
            f"{x['f1']:>6.3f} {x['contains']:>15.3f}"
        )
    print(f"{'extractive upper bound (span in context)':<42} {s['extractive_upper_bound']:.3f}")
    print(f"{'gold paragraph among sources':<42} {s['gold_source']:.3f}")
    print(f"{'abstained on answerable (false abstain)':<42} {s['false_abstain']:.3f}")
    print(
        f"{'answers citing [n]':<42} {s['citing']:.3f}; "
        f"cited source holds the gold span: {s['citation_right']}"
    )
    if result.get("abstain"):
        a = result["abstain"]["summary"]
        print(
            f"{'gold paragraph removed: abstained':<42} {a['abstain']:.3f} of {a['questions']} "
            f"(gold span anyway {a['contains_anyway']:.3f}); p50 {a['latency']['p50_s']:.2f} s"
        )
    c = result["concurrent"]
    print(
        f"{c['concurrency']} concurrent: {c['answers_per_s']:.2f} answers/s, "
        f"p50 {c['latency']['p50_s']:.2f} s, "
        f"p99 {c['latency']['p99_s']:.2f} s ({c['requests']} requests)"
    )
    if result.get("pubmed"):
        p = result["pubmed"]["summary"]
        print(
            f"{'PubMedQA accuracy':<42} {p['accuracy']:.3f} of {p['questions']} "
            f"(unreadable {p['unreadable']:.3f}, "
            f"always-yes {p['majority_label_share']:.3f}); p50 {p['latency']['p50_s']:.2f} s, "
            f"p99 {p['latency']['p99_s']:.2f} s"
        )


if __name__ == "__main__":
    sys.exit(main())
