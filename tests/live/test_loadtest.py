"""The Locust load test: budget rules on their own, then short headless runs against the session's live
server (real encoder, FAISS and vLLM), one that passes and one whose budget is broken on purpose."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtests.budgets import judge_stages, parse_overrides, resolve_budgets, verdict
from tests.support.paths import REPO
from tests.support.server import LiveServer

GENEROUS = "embed=600000,retrieve=600000,first_token=600000,generate=600000,total=600000"


def test_budgets_come_from_option_then_server_then_file() -> None:
    resolved = resolve_budgets(
        {"embed": 5.0},
        {"embed": 50, "retrieve": 10, "first_token": None},
        {"embed": 500.0, "retrieve": 100.0, "first_token": 4000.0},
    )
    assert resolved == {
        "embed": (5.0, "option"),
        "retrieve": (10.0, "server"),
        "first_token": (4000.0, "file"),
    }


@pytest.mark.parametrize("bad", ["embed", "embedding=5", "embed=fast", "total=5,,speed=1"])
def test_bad_budget_option_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_overrides(bad)


def test_verdict_fails_on_a_broken_budget_or_too_many_errors() -> None:
    budgets = {"embed": (50.0, "file"), "total": (1000.0, "file"), "generate": (900.0, "file")}
    stats = {"embed": (10, 20.0, 60.0, 70.0), "total": (10, 500.0, 900.0, 1500.0), "ttft": (3, 1.0, 2.0, 3.0)}
    rows = {r.stage: r for r in judge_stages(stats, budgets, "p95")}
    assert rows["embed"].verdict == "FAIL"  # p95 60 > 50
    assert rows["total"].verdict == "pass"  # p95 900 <= 1000 (its p99 would fail)
    assert rows["generate"].verdict == "no data"
    assert rows["ttft"].verdict == "-"  # reported, no budget
    assert not verdict(list(rows.values()), "p95", 100, 0, 0.01).passed
    assert judge_stages(stats, budgets, "p50")[0].verdict == "pass"
    ok = judge_stages({"embed": (10, 20.0, 30.0, 40.0)}, {"embed": (50.0, "file")}, "p95")
    assert verdict(ok, "p95", 100, 1, 0.01).passed
    failed = verdict(ok, "p95", 100, 2, 0.01)
    assert not failed.passed and "error rate" in failed.reasons[0]
    assert not verdict(ok, "p95", 3, 3, 1.0).passed  # nothing succeeded: nothing was measured


def _locust(url: str, out: Path, seconds: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless", "--host", url,
        "--users", "2", "--spawn-rate", "2", "--run-time", f"{seconds}s", "--csv", str(out / "lt"),
        "--verdict-json", str(out / "verdict.json"), "--only-summary", "--max-tokens", "8", *args,
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def _stats(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "lt_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


@pytest.mark.vllm
def test_locust_smoke_reports_stage_timings_and_passes(live_server: LiveServer, tmp_path: Path) -> None:
    result = _locust(live_server.url, tmp_path, 8, "ChatUser", "SearchUser", "--budget", GENEROUS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "VERDICT: PASS" in output and "Locust's own CPU" in output
    stats = _stats(tmp_path)
    assert int(stats["stage:embed"]["Request Count"]) > 0
    assert int(stats["stage:retrieve"]["Request Count"]) > 0
    assert int(stats["/v1/search"]["Failure Count"]) == 0
    # ChatUser asks both APIs: it reads the model name from /v1/models, then /v1/ask and chat completions.
    assert int(stats["/v1/models"]["Request Count"]) > 0
    answered = [name for name in stats if name.startswith(("/v1/ask", "/v1/chat/completions"))]
    assert answered and all(int(stats[name]["Failure Count"]) == 0 for name in answered), answered
    record = json.loads((tmp_path / "verdict.json").read_text())
    assert record["passed"] and record["failures"] == 0
    assert {row["stage"] for row in record["stages"]} >= {"embed", "retrieve", "total"}


@pytest.mark.vllm
def test_locust_exits_1_when_a_budget_is_broken(live_server: LiveServer, tmp_path: Path) -> None:
    # No embedding takes 0.001 ms: the verdict must fail and say which stage.
    result = _locust(live_server.url, tmp_path, 3, "SearchUser", "--budget", "embed=0.001")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "VERDICT: FAIL: embed p95 over its budget" in output
    assert json.loads((tmp_path / "verdict.json").read_text())["passed"] is False


@pytest.mark.vllm
def test_locust_ingest_user_posts_documents_or_says_why_not(live_server: LiveServer, tmp_path: Path) -> None:
    result = _locust(live_server.url, tmp_path, 3, "IngestUser", "--budget", GENEROUS)
    output = result.stdout + result.stderr
    probe = httpx.post(f"{live_server.url}/v1/documents", json={"documents": []}, timeout=60)
    if probe.status_code == 404:  # the documents API is not in this build: the user stands down
        assert "IngestUser: disabled (POST /v1/documents answered 404" in output, output[-4000:]
        assert "Traceback" not in output
    else:
        assert result.returncode == 0, output[-4000:]
        assert int(_stats(tmp_path)["/v1/documents"]["Failure Count"]) == 0
