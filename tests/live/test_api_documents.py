"""The documents API against the live server (real encoder, SQLite, FAISS, vLLM), on a copy of the
default index (see the ``live_server`` fixture): upsert, idempotency, replacement, delete, stats, bad
input refused whole, and the bearer key on write routes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from rag_service.api import build_app
from tests.support.http import assert_error
from tests.support.paths import REPO, repo_settings
from tests.support.server import LiveServer

KETTLE = {
    "id": "test:kettle",
    "title": "Kettles",
    "text": "A whistling kettle sings when the water inside it reaches a rolling boil on the stove.",
}
BIKE = {
    "id": "test:bike",
    "title": "Bicycles",
    "text": "A bicycle chain carries the force of the pedals to the rear wheel's sprocket.",
}


def _search(client: httpx.Client, query: str, top_k: int = 5) -> list[dict[str, Any]]:
    r = client.post("/v1/search", json={"query": query, "top_k": top_k})
    assert r.status_code == 200, r.text
    hits: list[dict[str, Any]] = r.json()["hits"]
    return hits


def test_upsert_search_replace_delete(client: httpx.Client) -> None:
    stats0 = client.get("/v1/index/stats").json()
    r = client.post("/v1/documents", json={"documents": [KETTLE, BIKE]})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["upserted"] == 2 and first["unchanged"] == 0 and first["chunks"] == 2
    assert first["seq"] == stats0["last_seq"] + 1

    # Idempotent: the same content again changes nothing, not even the sequence number.
    again = client.post("/v1/documents", json={"documents": [KETTLE, BIKE]}).json()
    assert again == {"upserted": 0, "unchanged": 2, "chunks": 0, "seq": first["seq"]}

    hits = _search(client, "why does my kettle whistle when the water boils?")
    assert hits[0]["id"] == "test:kettle#0" and hits[0]["doc_id"] == "test:kettle"
    assert hits[0]["title"] == "Kettles"

    doc = client.get("/v1/documents/test:kettle").json()
    assert doc["text"] == KETTLE["text"] and [c["id"] for c in doc["chunks"]] == ["test:kettle#0"]

    # New content replaces the old chunks.
    tea = {**KETTLE, "text": "Green tea should steep in water just below boiling for two minutes."}
    replaced = client.post("/v1/documents", json={"documents": [tea]}).json()
    assert replaced["upserted"] == 1 and replaced["seq"] == first["seq"] + 1
    assert _search(client, "how long should green tea steep?")[0]["text"] == tea["text"]
    kettle_texts = {h["text"] for h in _search(client, "whistling kettle rolling boil", 20)}
    assert KETTLE["text"] not in kettle_texts

    stats = client.get("/v1/index/stats").json()
    assert stats["documents"] == stats0["documents"] + 2
    assert stats["tombstones"] >= 1 and stats["applied_seq"] == stats["last_seq"]
    assert stats["encoder"] and stats["dimension"] == 384
    assert stats["database_bytes"] > stats["free_bytes"] >= 0

    # Delete: gone from the very next search.
    r = client.delete("/v1/documents/test:kettle")
    assert r.status_code == 200 and r.json()["deleted"] == "test:kettle"
    assert all(h["doc_id"] != "test:kettle" for h in _search(client, "how long should green tea steep?", 20))
    assert_error(client.get("/v1/documents/test:kettle"), 404, "not_found")
    assert_error(client.delete("/v1/documents/test:kettle"), 404, "not_found")
    client.delete("/v1/documents/test:bike")


def test_answer_sources_name_the_document_and_chunk(client: httpx.Client) -> None:
    doc = {
        "id": "test:moon/base",  # ids may contain slashes
        "title": "Moon base",
        "text": "The moon base Artemis Station keeps its water in an ice cellar under the crater rim.",
    }
    assert client.post("/v1/documents", json={"documents": [doc]}).status_code == 200
    r = client.post(
        "/v1/ask", json={"question": "Where does Artemis Station keep its water?", "max_tokens": 8}
    )
    assert r.status_code == 200, r.text
    source = r.json()["sources"][0]
    assert (source["id"], source["doc_id"]) == ("test:moon/base#0", "test:moon/base")
    assert client.get("/v1/documents/test:moon/base").status_code == 200
    assert client.delete("/v1/documents/test:moon/base").status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"documents": [{"title": "no id", "text": "some text"}]}, "documents.0.id"),
        ({"documents": [{"id": "", "text": "some text"}]}, "documents.0.id"),
        ({"documents": [{"id": "x1", "text": "fine"}, {"id": "x2", "text": "   "}]}, "documents.1.text"),
        ({"documents": [{"id": "x1", "text": "a"}, {"id": "x1", "text": "b"}]}, "documents.1.id"),
        ({"documents": [{"id": f"x{i}", "text": "t"} for i in range(9)]}, "documents"),  # max 8 here
        ({"documents": []}, "documents"),
        ({"documents": [{"id": 7, "text": "wrong type"}]}, "documents.0.id"),
        ({"documents": [{"id": "x1", "text": "t", "content": "unknown field"}]}, "documents.0.content"),
    ],
    ids=["missing-id", "empty-id", "empty-text", "duplicate-ids", "oversized", "empty", "int-id", "unknown"],
)
def test_bad_batches_are_refused_whole(client: httpx.Client, body: dict[str, Any], param: str) -> None:
    before = client.get("/v1/index/stats").json()
    error = assert_error(client.post("/v1/documents", json=body), 400, "invalid_request")
    assert error["param"] == param
    assert client.get("/v1/index/stats").json() == before, "nothing of a refused batch is stored"
    assert client.get("/v1/documents/x1").status_code == 404


def test_non_utf8_and_huge_bodies(client: httpx.Client) -> None:
    before = client.get("/v1/index/stats").json()
    bad = b'{"documents": [{"id": "x", "text": "caf\xe9"}]}'
    r = client.post("/v1/documents", content=bad, headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_request")
    huge = {"documents": [{"id": "big", "text": "word " * 20_000}]}  # over the server's 64 KiB
    assert_error(client.post("/v1/documents", json=huge), 413, "payload_too_large")
    assert client.get("/v1/index/stats").json() == before


def test_write_routes_need_the_key_when_one_is_set() -> None:
    """The auth dependency answers before the service is needed (this app is never started)."""
    settings = repo_settings().model_copy(update={"api_key": SecretStr("s3cret")})
    with_key = TestClient(build_app(settings))
    body = {"documents": [KETTLE]}
    assert with_key.post("/v1/documents", json=body).status_code == 401
    assert with_key.delete("/v1/documents/x", headers={"authorization": "Bearer nope"}).status_code == 401
    ok = with_key.post("/v1/documents", json=body, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 503 and ok.json()["error"]["code"] == "not_ready"  # past auth, not started
    assert with_key.get("/v1/documents/x").status_code == 503  # reads need no key


def test_cli_ingest_through_the_server(client: httpx.Client, live_server: LiveServer, tmp_path: Path) -> None:
    (tmp_path / "owls.md").write_text("# Owls\n\nBarn owls hunt voles at night by hearing alone.\n")
    (tmp_path / "kilns.txt").write_text("A pottery kiln fires clay at over a thousand degrees.\n")
    command = [sys.executable, "-m", "rag_service.cli", "ingest", str(tmp_path), "--server", live_server.url]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 new or changed" in first.stdout
    assert _search(client, "how do barn owls find voles in the dark?")[0]["doc_id"] == "owls.md"
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "2 unchanged" in again.stdout
    for doc_id in ("owls.md", "kilns.txt"):
        assert client.delete(f"/v1/documents/{doc_id}").status_code == 200
