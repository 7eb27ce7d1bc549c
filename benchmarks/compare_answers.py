"""Side by side: answer-quality runs of ``benchmarks.answers``, and whether a lead is real.

    python -m benchmarks.compare_answers qwen-0.5b-short smollm2 qwen-1.5b-short

Reads ``benchmarks/results/answers/LABEL/answers.json`` for each label, prints one row per run and,
for every pair asked on the same SQuAD questions, an exact McNemar test on "gold span in the answer":
only the questions one run got and the other missed count, and under "no difference" each of them
is a coin toss. This is how the default generator was chosen (README, "Answer quality"): a lead with
p >= 0.05 is a tie, and a tie goes to the faster run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from scipy.stats import binomtest

from benchmarks.answers import RESULTS


def load(label: str, root: Path) -> dict[str, Any]:
    path = root / label / "answers.json"
    if not path.is_file():
        raise SystemExit(f"no run {label!r}: {path} is missing (benchmarks.answers --label {label})")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def mcnemar(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, int, float] | None:
    """Questions only ``a`` answered right, only ``b`` did, and the two-sided exact p-value;
    None when the runs did not ask the same questions."""
    right_a = {r["id"]: bool(r["contains"]) for r in a["squad"]["records"]}
    right_b = {r["id"]: bool(r["contains"]) for r in b["squad"]["records"]}
    if right_a.keys() != right_b.keys():
        return None
    only_a = sum(right_a[q] and not right_b[q] for q in right_a)
    only_b = sum(right_b[q] and not right_a[q] for q in right_a)
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def row(result: dict[str, Any]) -> str:
    s = result["squad"]["summary"]
    abstain = result.get("abstain") or {}
    gone = abstain.get("summary", abstain) if abstain else {}
    pubmed = (result.get("pubmed") or {}).get("summary", {})
    concurrent = result.get("concurrent") or {}
    cells = [
        result["label"],
        str(s["questions"]),
        f"{s['contains']:.3f}",
        f"{s['f1']:.3f}",
        f"{s['em']:.3f}",
        f"{s['false_abstain']:.3f}",
        f"{gone['abstain']:.3f} ({gone['questions']})" if gone else "-",
        f"{pubmed['accuracy']:.3f} ({pubmed['questions']})" if pubmed else "-",
        f"{s['latency']['p50_s']:.2f} / {s['latency']['p99_s']:.2f}",
        (
            f"{concurrent['answers_per_s']:.2f}, {concurrent['latency']['p50_s']:.2f} / "
            f"{concurrent['latency']['p99_s']:.2f}"
            if concurrent
            else "-"
        ),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("labels", nargs="+", help="run labels under --root")
    parser.add_argument("--root", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = [load(label, args.root) for label in args.labels]
    print(f"{runs[0]['cpu']} ({runs[0]['isa']}, {runs[0]['cpus']} CPUs)\n")
    print(
        "| run | SQuAD n | gold span in answer | F1 | EM | false abstain | abstain, gold removed (n) "
        "| PubMedQA acc (n) | 1 concurrent p50 / p99 s | 4 concurrent answers/s, p50 / p99 s |"
    )
    print("|---" * 10 + "|")
    for result in runs:
        print(row(result))
    print()
    for a, b in itertools.combinations(runs, 2):
        test = mcnemar(a, b)
        if test is None:
            print(f"{a['label']} vs {b['label']}: not the same questions, no paired test")
            continue
        only_a, only_b, p = test
        verdict = "a real difference" if p < 0.05 else "a tie (p >= 0.05)"
        print(
            f"{a['label']} vs {b['label']}: right only in the first {only_a}, only in the second {only_b}; "
            f"McNemar exact p {'< 0.001' if p < 0.001 else f'= {p:.3f}'}: {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
