"""Smoke runs of the benchmark scripts, so they keep working (figures are not asserted).

Each runs in a few seconds on tiny inputs; the ones that need a server use the session's live server.
The peers come from the ``bench`` extra (bm25s, llama-cpp-python), which ``make test`` installs; in an
environment without it those smoke tests are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import GENERATOR_DIR, REPO, SHARED_DATA, scifact_dir
from tests.support.server import LiveServer


def _bench(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    # The suite's generator, not the configured default: the scripts build prompts with its tokenizer
    # for the session's live server, and start engines of their own with it.
    env = {**os.environ, "RAG_GENERATOR__MODEL": str(GENERATOR_DIR)}
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: it comes with the 'bench' extra (make test installs it)")


def test_hnsw_params_benchmark_smoke(tmp_path: Path) -> None:
    data = scifact_dir()
    result = _bench("hnsw_params", "--data", str(data), "--docs", "200", "--out", str(tmp_path))
    assert "efSearch=64" in result.stdout
    rows = json.loads((tmp_path / "hnsw_params.json").read_text())["rows"]
    assert rows[0]["index"].startswith("exact") and len(rows) == 6
    assert all(0.0 <= r["recall@10"] <= 1.0 for r in rows)
    gaps = json.loads((tmp_path / "hnsw_params.json").read_text())["exact_neighbour_similarity"]
    assert gaps["sim@1"] >= gaps["sim@10"] >= gaps["sim@100"]

    # Synthetic vectors shaped like those real ones (the run above cached them).
    like = tmp_path / "scifact-200-vectors.npy"
    args = ["--synthetic", "3000", "--distribution", "embedding", "--like", str(like), "--queries", "20"]
    _bench("hnsw_params", *args, "--ef-construction", "40", "--ef-search", "16", "--out", str(tmp_path))
    record = json.loads((tmp_path / "ann_synthetic_3000_embedding.json").read_text())
    assert record["dim"] == 384 and "covariance" in record["distribution"]
    assert 0.0 <= record["rows"][0]["recall@10"] <= 1.0


def test_ann_synthetic_benchmark_smoke(tmp_path: Path) -> None:
    args = ["--synthetic", "3000", "--queries", "20", "--ef-construction", "40", "--ef-search", "16,64"]
    _bench("hnsw_params", *args, "--out", str(tmp_path))
    record = json.loads((tmp_path / "ann_synthetic_3000.json").read_text())
    assert record["vectors"] == 3000 and record["build_s"] > 0 and record["index_mb"] > 3000 * 384 * 4 / 2**20
    recalls = [r["recall@10"] for r in record["rows"]]
    assert [r["ef_search"] for r in record["rows"]] == [16, 64]
    assert all(0.0 <= x <= 1.0 for x in recalls) and recalls[1] >= recalls[0]


@pytest.mark.vllm
def test_retrieval_benchmark_smoke(live_server: LiveServer, tmp_path: Path) -> None:
    _needs("bm25s")
    args = ["--datasets", "builtin", "--max-queries", "8", "--url", live_server.url, "--out", str(tmp_path)]
    result = _bench("retrieval", *args)
    assert "BM25 (bm25s)" in result.stdout
    entry = json.loads((tmp_path / "retrieval.json").read_text())["datasets"][0]
    assert entry["dataset"] == "builtin" and entry["queries"] == 8
    modes = {"service dense", "service lexical", "service hybrid"}
    assert set(entry["rows"]) == modes | {"exact (IndexFlatIP)", "BM25 (bm25s)"}
    assert set(entry["latency"]) == {"dense", "lexical", "hybrid"}
    for scores in entry["rows"].values():
        assert 0.0 <= scores["ndcg@10"] <= 1.0 and scores["recall@10"] <= scores["recall@100"] <= 1.0


def test_encoder_benchmark_smoke(tmp_path: Path) -> None:
    _bench("encoder", "--queries", "32", "--docs", "16", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "encoder.json").read_text())["rows"]
    floors = {"service torch (float32)": 0.99999, "service onnx": 0.9999, "service onnx-int8": 0.97}
    for name, floor in floors.items():  # each backend computes the reference's vectors, within its floor
        assert rows[name]["cosine_min"] > floor, name
    for row in rows.values():
        assert row["docs_per_s"] > 0 and row["queries_per_s_batch32"] > 0 and row["query_ms_p50"] > 0


def test_mixed_backends_benchmark_smoke(tmp_path: Path) -> None:
    if not (SHARED_DATA / "scifact").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    args = ["--datasets", "scifact", "--max-queries", "10", "--max-docs", "300", "--out", str(tmp_path)]
    _bench("mixed_backends", *args)
    record = json.loads((tmp_path / "mixed_backends.json").read_text())
    assert len(record["results"]["scifact"]) == 4  # every query backend x index backend pairing
    assert 0 <= record["largest_delta"] <= 1


@pytest.mark.vllm
def test_edge_profile_benchmark_smoke(tmp_path: Path) -> None:
    # The edge profile only (the default one is every other server of the suite), short answers.
    _bench(
        "edge_profile", "--profiles", "edge", "--questions", "1", "--max-tokens", "8", "--out", str(tmp_path)
    )
    profiles = json.loads((tmp_path / "edge_profile.json").read_text())["profiles"]
    assert profiles["edge"]["encoder_backend"]["backend"] == "onnx-int8"
    for profile in profiles.values():
        assert profile["memory_at_ready"]["rss_mib"] > 100 and profile["ready_s"] > 0
        assert profile["stages_ms"]["total"]["n"] == 1


@pytest.mark.vllm
def test_generation_benchmark_smoke(live_server: LiveServer, tmp_path: Path) -> None:
    # The raw vLLM engine is left out here: a second engine would cost ~40 s of start-up.
    engines = "service,llama.cpp" if importlib.util.find_spec("llama_cpp") else "service"
    args = ["--url", live_server.url, "--engines", engines, "--levels", "1,2", "--min-requests", "1"]
    # One passage per prompt keeps the prefill short (llama.cpp prefills ~600 tokens in seconds).
    _bench("generation", *args, "--top-k", "1", "--max-tokens", "4", "--out", str(tmp_path))
    record = json.loads((tmp_path / "generation.json").read_text())
    assert set(record["engines"]) == set(engines.split(","))
    for levels in record["engines"].values():
        assert [lv["concurrency"] for lv in levels] == [1, 2]
        assert all(lv["errors"] == 0 and lv["completion_tokens"] > 0 for lv in levels)
    # The peers are fed the prompts the script builds: the service must have used the very same.
    assert record["service_same_prompt"] == 3
    if "llama.cpp" in engines:
        assert record["agreement"]["service vs llama.cpp"]["pairs"] == 3


@pytest.mark.vllm
def test_generation_tuning_benchmark_smoke(tmp_path: Path) -> None:
    # One raw vLLM variant in its own subprocess (~40 s of engine start), one short level.
    args = ["--variants", "baseline", "--dtypes", "float32", "--levels", "1", "--requests", "1"]
    args += ["--top-k", "1", "--max-tokens", "4", "--bandwidth-mib", "256"]
    # No waiting for a quiet machine (a test session is never quiet) and no reruns: figures are not asserted.
    args += ["--max-load", "99", "--load-patience", "0", "--retries", "0"]
    _bench("generation_tuning", *args, "--out", str(tmp_path))
    record = json.loads((tmp_path / "generation_tuning.json").read_text())
    assert record["machine"]["cores"] >= 1 and set(record["machine"]["isa"]) >= {"avx2", "avx512f"}
    floor = record["floor"]
    assert floor["parameters"] > 0 and floor["ms"]["float32"] > floor["ms"]["bfloat16"] > 0
    baseline = record["variants"]["baseline-fp32"]
    assert baseline["returncode"] == 0 and baseline["start_s"] > 0 and baseline["max_num_batched_tokens"] > 0
    (level,) = baseline["levels"]
    assert level["concurrency"] == 1 and level["errors"] == 0 and level["completion_tokens"] == 4
    for key in ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "tokens_per_s"):
        assert level[key] is not None


@pytest.mark.vllm
def test_end_to_end_benchmark_smoke(live_server: LiveServer, tmp_path: Path) -> None:
    args = ["--url", live_server.url, "--concurrency", "2", "--duration", "2", "--max-tokens", "4"]
    _bench("end_to_end", *args, "--out", str(tmp_path))
    rows = json.loads((tmp_path / "end_to_end.json").read_text())["rows"]
    assert [r["endpoint"] for r in rows] == ["/v1/search", "/v1/ask"]
    assert all(r["requests"] > 0 and r["latency_ms_p50"] <= r["latency_ms_p99"] for r in rows)


def test_query_batching_benchmark_smoke(tmp_path: Path) -> None:
    result = _bench("query_batching", "--smoke", "--concurrency", "1", "8", "--out", str(tmp_path))
    assert "on/off ratios" in result.stdout
    report = json.loads((tmp_path / "query_batching.json").read_text())
    assert {(r["mode"], r["concurrency"]) for r in report["rows"]} == {
        (mode, c) for mode in ("on", "off", "direct") for c in (1, 8)
    }
    assert all(r["queries_per_s"] > 0 for r in report["rows"])


def test_overload_benchmark_smoke(tmp_path: Path, live_server: LiveServer) -> None:
    _bench("overload", "--smoke", "--url", live_server.url, "--out", str(tmp_path))
    report = json.loads((tmp_path / "overload.json").read_text())
    burst = report["burst"]
    assert burst["admitted"] + burst["rejected_429"] == burst["burst"]
    assert burst["answered_200"] <= burst["admitted"]
    assert set(report["budgets_ms"]) == {"embed", "retrieve", "first_token", "generate", "total"}


def test_ingest_benchmark_smoke(tmp_path: Path) -> None:
    data = scifact_dir()
    args = ["--data", str(data), "--docs", "24", "--batch", "8", "--idle-queries", "10", "--window", "1"]
    result = _bench("ingest", *args, "--out", str(tmp_path))
    assert "ratio ours / plain" in result.stdout
    figures = json.loads((tmp_path / "ingest.json").read_text())
    assert figures["docs"] == 24 and figures["chunks"] >= 24
    assert figures["ingest_docs_per_s"] > 0 and figures["plain_docs_per_s"] > 0
    assert figures["query_ms_idle"]["n"] >= 10 and figures["query_ms_during_ingestion"]["n"] >= 1


def test_semantic_cache_benchmark_smoke(tmp_path: Path) -> None:
    data = SHARED_DATA / "squad-v1.1-dev"
    if not (data / "qa.jsonl").is_file():
        pytest.skip(f"shared evaluation data not found at {data} (set RAG_SHARED_DATA to its folder)")
    result = _bench("semantic_cache", "--articles", "1", "--thresholds", "0.9,0.99", "--out", str(tmp_path))
    assert "reuse rule: cosine >= threshold and same passages" in result.stdout
    record = json.loads((tmp_path / "semantic_cache.json").read_text())
    assert record["articles"] == 1 and record["questions"] > 0 and record["mode"] == "hybrid"
    rows = record["rows"]
    assert [r["threshold"] for r in rows] == [0.9, 0.99]
    assert rows[0]["hits"] >= rows[1]["hits"]  # a higher threshold reuses no more
    assert all(0.0 <= r["false_hit_rate"] <= 1.0 and r["hits"] >= r["false_hits"] for r in rows)
    assert isinstance(record["decision"]["enable"], bool)


@pytest.mark.vllm
def test_answer_cache_benchmark_smoke(live_server: LiveServer, tmp_path: Path) -> None:
    args = ["--url", live_server.url, "--conditions", "on", "--users", "2", "--time", "6s"]
    result = _bench("answer_cache", *args, "--max-tokens", "4", "--out", str(tmp_path))
    assert "cache on:" in result.stdout
    on = json.loads((tmp_path / "answer_cache.json").read_text())["conditions"]["on"]
    assert on["answered"] > 0 and on["errors"] == 0 and on["requests_per_s"] > 0
    assert 0.0 <= on["hit_rate"] <= 1.0
    assert on["all"]["total"]["n"] == on["answered"] and on["all"]["client_end_to_end"]["p50"] > 0
    misses = on["misses"]["generate"]
    assert misses is None or misses["n"] == on["answered"] - round(on["hit_rate"] * on["answered"])


@pytest.mark.vllm
def test_answers_benchmark_smoke(tmp_path: Path) -> None:
    for name in ("squad-v1.1-dev", "pubmedqa-pqal"):
        if not (SHARED_DATA / name / "qa.jsonl").is_file():
            pytest.skip(f"shared evaluation data not found at {SHARED_DATA / name} (set RAG_SHARED_DATA)")
    # The suite's generator: the configured default (auto) is a Qwen model, minutes per server here.
    args = ["--generator", str(GENERATOR_DIR), "--squad", "2", "--abstain", "1", "--pubmed", "0"]
    args += ["--concurrent-requests", "2", "--max-docs", "60"]
    result = _bench("answers", *args, "--label", "smoke", "--out", str(tmp_path))
    assert "extractive upper bound" in result.stdout
    record = json.loads((tmp_path / "smoke" / "answers.json").read_text())
    squad = record["squad"]["summary"]
    assert squad["questions"] == 2 and 0 <= squad["contains"] <= 1
    assert 0 <= squad["extractive_upper_bound"] <= 1
    assert 0 <= squad["no_retrieval"]["f1"] <= 1 and squad["latency"]["p50_s"] > 0
    assert record["abstain"]["summary"]["questions"] == 1 and record["concurrent"]["requests"] == 2
    assert record["cpu"] and record["isa"]
