"""Stage budgets and the load test's verdict: which budgets apply, and whether a run kept them.

Budgets come, per stage, from the first of: the ``--budget`` option, the server's own configuration
(``GET /readyz`` reports ``budgets_ms`` once the budgets feature is deployed), the budgets file
(``loadtests/budgets.json`` by default). A stage keeps its budget when the chosen percentile of the
server's own timings for it (``timings_ms``, recorded as Locust entries ``stage:<name>``) is within it.
Plain Python, no Locust import, so the rules are testable on their own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STAGES = ("embed", "retrieve", "first_token", "generate", "total")
DEFAULT_BUDGETS_FILE = Path(__file__).with_name("budgets.json")
PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


def parse_overrides(text: str) -> dict[str, float]:
    """``"embed=40,total=9000"`` -> ``{"embed": 40.0, "total": 9000.0}``."""
    budgets: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        stage, sep, value = item.partition("=")
        if not sep or stage.strip() not in STAGES:
            raise ValueError(f"bad budget {item!r}: expected <stage>=<ms> with stage in {', '.join(STAGES)}")
        budgets[stage.strip()] = float(value)
    return budgets


def read_budgets_file(path: Path) -> dict[str, float]:
    data = json.loads(path.read_text())
    return {stage: float(data[stage]) for stage in STAGES if data.get(stage) is not None}


def resolve_budgets(
    overrides: dict[str, float], server: dict[str, Any] | None, file_budgets: dict[str, float]
) -> dict[str, tuple[float, str]]:
    """Per stage: (budget ms, where it came from). ``server`` is the ``budgets_ms`` of ``/readyz``."""
    resolved: dict[str, tuple[float, str]] = {}
    for stage in STAGES:
        if stage in overrides:
            resolved[stage] = (overrides[stage], "option")
        elif server and server.get(stage) is not None:
            resolved[stage] = (float(server[stage]), "server")
        elif stage in file_budgets:
            resolved[stage] = (file_budgets[stage], "file")
    return resolved


@dataclass(frozen=True, slots=True)
class StageRow:
    stage: str
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    budget_ms: float | None
    source: str
    verdict: str  # "pass", "FAIL", "no data" or "-" (no budget)


def judge_stages(
    percentiles: dict[str, tuple[int, float, float, float]],
    budgets: dict[str, tuple[float, str]],
    percentile: str,
) -> list[StageRow]:
    """``percentiles``: entry name -> (count, p50, p95, p99). Budgeted stages come first, in order."""
    rows: list[StageRow] = []
    names = list(STAGES) + sorted(set(percentiles) - set(STAGES))
    for name in names:
        budget, source = budgets.get(name, (None, ""))
        if name not in percentiles:
            if budget is not None:
                rows.append(StageRow(name, 0, None, None, None, budget, source, "no data"))
            continue
        count, p50, p95, p99 = percentiles[name]
        observed = {"p50": p50, "p95": p95, "p99": p99}[percentile]
        verdict = "-" if budget is None else "pass" if observed <= budget else "FAIL"
        rows.append(StageRow(name, count, p50, p95, p99, budget, source, verdict))
    return rows


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    stages: list[StageRow]
    percentile: str
    requests: int
    failures: int
    error_rate: float
    max_error_rate: float
    reasons: list[str]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "stages": [asdict(row) for row in self.stages]}


def verdict(
    stages: list[StageRow], percentile: str, requests: int, failures: int, max_error_rate: float
) -> Verdict:
    reasons = [
        f"{row.stage} {percentile} over its budget of {row.budget_ms:g} ms"
        for row in stages
        if row.verdict == "FAIL"
    ]
    error_rate = failures / requests if requests else 0.0
    if error_rate > max_error_rate:
        reasons.append(f"error rate {error_rate:.2%} over the limit of {max_error_rate:.2%}")
    if requests - failures <= 0:
        reasons.append("no successful request: nothing was measured")
    return Verdict(not reasons, stages, percentile, requests, failures, error_rate, max_error_rate, reasons)


def render(v: Verdict) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"

    lines = [
        f"Stage budgets (server's own timings_ms; a stage passes when its {v.percentile} <= budget)",
        f"{'stage':<16} {'count':>6} {'p50':>8} {'p95':>8} {'p99':>8} {'budget':>8} {'from':<7} verdict",
    ]
    for r in v.stages:
        budget = ms(r.budget_ms) if r.budget_ms is not None else "-"
        lines.append(
            f"{r.stage:<16} {r.count:>6} {ms(r.p50):>8} {ms(r.p95):>8} {ms(r.p99):>8} {budget:>8} "
            f"{r.source or '-':<7} {r.verdict}"
        )
    lines.append(
        f"HTTP requests: {v.requests}, failures: {v.failures} "
        f"({v.error_rate:.2%}; limit {v.max_error_rate:.2%})"
    )
    lines.append("VERDICT: PASS" if v.passed else "VERDICT: FAIL: " + "; ".join(v.reasons))
    return "\n".join(lines)
