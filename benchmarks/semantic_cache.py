"""Is a semantic answer cache safe? Its hit rate and false-hit rate on SQuAD v1.1 dev, per threshold.

    .venv/bin/python -m benchmarks.semantic_cache [--articles 0] [--thresholds 0.80,...,0.99]
        [--mode hybrid] [--top-k 4] [--seed 0] [--out benchmarks/results]

A semantic cache reuses the answer of an earlier question for a new one when the two questions'
embeddings are close (cosine at or above a threshold) and, the rule measured here, retrieval found the
same passages for both (the same packed passages, in the same order: the prompt would differ only in
the question). SQuAD's shared questions are the hard case it must survive: many different questions
are asked about each paragraph, so "same passages" alone is no evidence of "same question".

The questions are asked once each, in a shuffled order (``--seed``); every earlier question is in the
cache (unbounded). A question *hits* when the most similar earlier question with the same passages is
at or above the threshold; the hit is *false* when the two questions' gold answers share no answer
after SQuAD's normalization (lower case, no punctuation, no articles, single spaces): the reused
answer was for a different question. Questions whose text equals an earlier one's (after the same
normalization) are counted apart: the prompt-exact cache already answers those, so the semantic
cache's own value is the rest (``semantic hits``).

Only the encoder and retrieval run (no generation): the index is the service's own (``build-index`` of
the corpus, cached in ``benchmarks/results/indexes/`` and shared with ``benchmarks.retrieval``), searched
in-process with the service's ``PassageSearch`` exactly as the pipeline does (dense, lexical, RRF
fusion, token-budget packing). ``--articles N`` keeps only the first N articles that have shared
questions (a smoke run: its own small index). Prints the table and writes ``semantic_cache.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.retrieval import RESULTS, SHARED
from rag_service.config import Settings
from rag_service.domain import Document, Hit

DATASET = "squad-v1.1-dev"
THRESHOLDS = [0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]
SAFE_FALSE_HIT_RATE = 0.01  # the issue's bar: under 1 % of reused answers wrong
USEFUL_HIT_RATE = 0.05  # and at least 5 % of questions answered by it beyond exact repeats


def normalize(text: str) -> str:
    """SQuAD's answer normalization (its official evaluation script)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def load(folder: Path, articles: int) -> tuple[list[Document], list[dict[str, Any]]]:
    """The corpus (all of it, or the first ``articles`` articles that have shared questions) and its
    shared questions."""
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines() if line.strip()]
    qa = [json.loads(line) for line in (folder / "qa.jsonl").read_text().splitlines() if line.strip()]
    if articles:
        article_of = {d["_id"]: d["title"] for d in docs}
        keep = list(dict.fromkeys(article_of[q["doc_ids"][0]] for q in qa))[:articles]
        docs = [d for d in docs if d["title"] in keep]
        qa = [q for q in qa if article_of[q["doc_ids"][0]] in keep]
    return [Document(d["_id"], d["title"], d["text"]) for d in docs], qa


def index_folder(docs: list[Document], articles: int, out: Path, encoder: Any, settings: Settings) -> Path:
    from rag_service.index.snapshot import index_state
    from rag_service.ingestion.build import build_index

    name = DATASET if not articles else f"{DATASET}-{articles}-articles"
    folder = out / "indexes" / name
    if index_state(folder) == "ready":
        print(f"index cached in {folder}", flush=True)
        return folder
    print(f"building the index of {len(docs)} paragraphs in {folder} (once)", flush=True)
    build_index(docs, encoder, settings, folder, progress=True)
    return folder


def retrieve_all(
    folder: Path, questions: list[str], encoder: Any, settings: Settings, mode: str, top_k: int
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """The packed passages of every question, as the pipeline's retrieve stage would pack them."""
    from rag_service.index.live import LiveIndex
    from rag_service.prompting.prompt import PromptBuilder
    from rag_service.retrieval.passages import PassageSearch

    vectors = encoder.encode_queries(questions)
    prompts = PromptBuilder.from_model(settings.generator.model, settings.generator.rag_instruction)
    live = LiveIndex.open(folder, encoder.index_spec(), settings.index)
    try:
        search = PassageSearch(live, prompts, settings.retriever)
        depth = search.candidates(top_k) if mode == "hybrid" else top_k
        passages: list[tuple[str, ...]] = []
        for text, vector in zip(questions, vectors, strict=True):
            hits: list[Hit]
            if mode == "dense":
                hits = search.search(vector, top_k)
            elif mode == "lexical":
                hits = search.search_text(text, top_k)
            else:
                hits = search.fuse(search.search(vector, depth), search.search_text(text, depth), top_k)
            context = search.pack(hits, settings.retriever.context_tokens)
            passages.append(tuple(h.passage.id for h in context.hits))
    finally:
        live.close()
    return vectors, passages


def simulate(
    vectors: np.ndarray,
    passages: list[tuple[str, ...]],
    golds: list[set[str]],
    texts: list[str],
    thresholds: list[float],
    seed: int,
) -> list[dict[str, float]]:
    """Every question in a shuffled order against all earlier ones (see the module's docstring)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    seen: dict[tuple[str, ...], list[int]] = defaultdict(list)
    # Per question: the best earlier match with the same passages (cosine, whether its answers differ,
    # whether its text is the same question's).
    best: list[tuple[float, bool, bool]] = []
    for i in order:
        earlier = seen[passages[i]]
        if earlier:
            sims = vectors[earlier] @ vectors[i]
            j = earlier[int(np.argmax(sims))]
            best.append((float(sims.max()), not (golds[i] & golds[j]), texts[i] == texts[j]))
        seen[passages[i]].append(i)
    n = len(texts)
    rows = []
    for t in thresholds:
        hits = [(wrong, same) for sim, wrong, same in best if sim >= t - 1e-9]
        semantic = [wrong for wrong, same in hits if not same]
        rows.append(
            {
                "threshold": t,
                "hit_rate": len(hits) / n,
                "false_hit_rate": (sum(w for w, _ in hits) / len(hits)) if hits else 0.0,
                "semantic_hit_rate": len(semantic) / n,
                "semantic_false_hit_rate": (sum(semantic) / len(semantic)) if semantic else 0.0,
                "hits": len(hits),
                "false_hits": sum(w for w, _ in hits),
                "exact_repeats": len(hits) - len(semantic),
            }
        )
    return rows


def decide(rows: list[dict[str, float]]) -> dict[str, Any]:
    """The lowest threshold whose reused answers are under 1 % wrong, and whether its hit rate beyond
    exact repeats is useful (5 % of questions)."""
    safe = [
        r for r in rows if r["semantic_false_hit_rate"] < SAFE_FALSE_HIT_RATE and r["semantic_hit_rate"] > 0
    ]
    if not safe:
        return {"enable": False, "threshold": None, "why": "no threshold keeps false hits under 1 %"}
    pick = min(safe, key=lambda r: r["threshold"])
    useful = pick["semantic_hit_rate"] >= USEFUL_HIT_RATE
    why = (
        f"threshold {pick['threshold']:.2f}: {pick['semantic_false_hit_rate']:.1%} false hits, "
        f"{pick['semantic_hit_rate']:.2%} of questions reused beyond exact repeats"
        + ("" if useful else f" (under the {USEFUL_HIT_RATE:.0%} that would be worth it)")
    )
    return {"enable": useful, "threshold": pick["threshold"], "why": why}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / DATASET)
    parser.add_argument("--articles", type=int, default=0, help="only the first N articles (0 = all)")
    parser.add_argument("--thresholds", default=",".join(f"{t:.2f}" for t in THRESHOLDS))
    parser.add_argument("--mode", default="hybrid", choices=["dense", "lexical", "hybrid"])
    parser.add_argument("--top-k", type=int, default=Settings().retriever.top_k)
    parser.add_argument("--seed", type=int, default=0, help="order in which the questions are asked")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (args.data / "qa.jsonl").is_file():
        print(f"no SQuAD data at {args.data} (set RAG_SHARED_DATA or --data)", file=sys.stderr)
        return 2
    from rag_service.embedding.encoder import Encoder

    started = time.perf_counter()
    settings = Settings()
    encoder = Encoder(settings.encoder)
    docs, qa = load(args.data, args.articles)
    folder = index_folder(docs, args.articles, args.out, encoder, settings)
    texts = [q["question"] for q in qa]
    print(f"encoding {len(texts)} questions, retrieving their passages ({args.mode}, top {args.top_k})")
    vectors, passages = retrieve_all(folder, texts, encoder, settings, args.mode, args.top_k)
    golds = [{normalize(a) for a in q["answers"]} for q in qa]
    normalized = [normalize(t) for t in texts]
    thresholds = _floats(args.thresholds)
    # The rule measured (the same packed passages, in order), and a looser one for comparison: only
    # the same best passage. The decision is the first rule's.
    by_rule = {
        rule: simulate(vectors, keys, golds, normalized, thresholds, args.seed)
        for rule, keys in (("same passages", passages), ("same top passage", [p[:1] for p in passages]))
    }
    rows = by_rule["same passages"]
    decision = decide(rows)

    print(f"\nSemantic cache on SQuAD v1.1 dev ({len(texts)} shared questions, {len(docs)} paragraphs)")
    heads = f"{'hit rate':>8}  {'false hits':>10}  {'semantic hits':>13}  {'their false':>11}  repeats"
    for rule, rule_rows in by_rule.items():
        print(f"\nreuse rule: cosine >= threshold and {rule}")
        print(f"{'threshold':>9}  {heads}")
        for r in rule_rows:
            print(
                f"{r['threshold']:>9.2f}  {r['hit_rate']:>8.2%}  {r['false_hit_rate']:>10.1%}  "
                f"{r['semantic_hit_rate']:>13.2%}  {r['semantic_false_hit_rate']:>11.1%}  "
                f"{r['exact_repeats']:>7}"
            )
    print(f"decision: {'enable' if decision['enable'] else 'keep it off'}: {decision['why']}")
    record = {
        "dataset": DATASET,
        "questions": len(texts),
        "paragraphs": len(docs),
        "articles": args.articles or "all",
        "mode": args.mode,
        "top_k": args.top_k,
        "seed": args.seed,
        "distinct_passage_lists": len(set(passages)),
        "rows": rows,
        "rows_same_top_passage": by_rule["same top passage"],
        "decision": decision,
        "seconds": round(time.perf_counter() - started, 1),
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "semantic_cache.json").write_text(json.dumps(record, indent=2))
    print(f"written to {args.out / 'semantic_cache.json'}")
    return 0


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    sys.exit(main())
