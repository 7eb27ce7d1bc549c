"""The API as its OpenAPI schema describes it, fuzzed: schemathesis generates valid and invalid
requests for every operation of the live server (vLLM included) and checks each answer with all of
its checks (no 5xx, only declared statuses, every body in its declared shape, schema-valid requests
accepted, schema-invalid ones refused, Allow headers right), with the exceptions and their reasons
in ``tests/live/schemathesis.toml``. Bounded in examples per operation, so it takes about a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag_service.config import Settings
from tests.support.server import LiveServer, server_of_its_own

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES_PER_OPERATION = 60
SEED = 6  # reproducible: a failure can be replayed with the same seed


@pytest.fixture(scope="module")
def fuzzed_server(
    settings: Settings, default_index_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server of its own: the fuzzer writes and deletes documents the other tests must not see."""
    env = {
        "RAG_SERVER__MAX_BODY_BYTES": "65536",
        # Short answers keep a thousand generated requests to a minute; the limit is in the schema.
        "RAG_GENERATOR__MAX_TOKENS": "8",
        "RAG_GENERATOR__MAX_TOKENS_LIMIT": "16",
        # The budget check is not under test here, and a loaded machine must not make it refuse.
        "RAG_BUDGET__ACCEPT_OVER_BUDGET": "true",
    }
    with server_of_its_own(settings, default_index_dir, tmp_path_factory.mktemp("fuzzed"), env) as server:
        yield server


def test_the_schema_declares_what_each_route_answers(fuzzed_server: LiveServer) -> None:
    schema = httpx.get(f"{fuzzed_server.url}/openapi.json").json()
    operations = {(m.upper(), p): op for p, ops in schema["paths"].items() for m, op in ops.items()}
    assert len(operations) == 13
    for (method, path), op in operations.items():
        statuses = set(op["responses"])
        assert "422" not in statuses, f"{method} {path}: validation errors are 400 here"
        if op.get("requestBody"):
            assert {"400", "413"} <= statuses, f"{method} {path}"
        if path == "/readyz":  # its 503 is the readiness body itself, with the reason
            assert statuses == {"200", "503"}
            continue
        for status in statuses - {"200"}:
            body = op["responses"][status]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ErrorResponse"}, f"{method} {path} {status}"
    ask = schema["components"]["schemas"]["AskBody"]["properties"]
    # The settings' limits are in the schema (RAG_GENERATOR__MAX_TOKENS_LIMIT=16 on this server).
    assert {"type": "integer", "minimum": 1, "maximum": 16} in ask["max_tokens"]["anyOf"]
    seed = schema["components"]["schemas"]["CompletionRequest"]["properties"]["seed"]["anyOf"][0]
    assert seed["maximum"] == 2**63 - 1


def test_fuzzing_every_operation_finds_no_failure(fuzzed_server: LiveServer, tmp_path: Path) -> None:
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run"),
        f"{fuzzed_server.url}/openapi.json",
        *("--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED), "--workers", "1"),
        *("--request-timeout", "120", "--max-response-time", "120", "--no-color"),
        *("--report", "json", "--report-json-path", str(tmp_path / "report.json")),
    ]
    # In tmp_path: schemathesis keeps a crash cache (.schemathesis/) in its working directory.
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    cases = report["test_cases"]
    print(
        f"schemathesis {report['schemathesis_version']}: {report['operations']['tested']} operations, "
        f"{cases['generated']} requests generated, {cases['with_failures']} with failures, "
        f"{report['running_time']:.0f} s"
    )
    assert run.returncode == 0, run.stdout[-12000:]
    assert report["operations"]["tested"] == 13
    assert cases["generated"] >= 13 * 20, "too few requests to mean anything"
    assert report["failures"] == [] and report["errors"] == []
    # The server logged no unhandled error while being fuzzed.
    assert "unhandled error" not in fuzzed_server.log_text()
