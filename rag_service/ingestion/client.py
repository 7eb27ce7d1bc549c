"""``rag-service ingest --server URL``: the same batches sent to a running server's documents API.

Standard library only (urllib), so the command needs nothing beyond the package. The server commits
and applies each batch before answering, so an answered batch is acknowledged: re-running after an
interruption re-sends every batch, and the server skips the documents it already holds unchanged.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from rag_service.config import Settings
from rag_service.domain import Document

TIMEOUT_S = 600


def _post(url: str, body: dict[str, Any], api_key: str | None) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def ingest_over_http(server: str, docs: Sequence[Document], batch: int, settings: Settings) -> int:
    url = server.rstrip("/") + "/v1/documents"
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    totals = {"upserted": 0, "unchanged": 0, "chunks": 0}
    started = time.perf_counter()
    with tqdm(total=len(docs), desc="ingesting", unit="doc") as bar:
        for start in range(0, len(docs), batch):
            part = docs[start : start + batch]
            body = {"documents": [{"id": d.id, "title": d.title, "text": d.text} for d in part]}
            try:
                result = _post(url, body, key)
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                print(f"\nerror: the server answered {exc.code}: {detail}", file=sys.stderr, flush=True)
                print(f"{start} documents were acknowledged before it; re-run to resume", file=sys.stderr)
                return 1
            except (urllib.error.URLError, OSError) as exc:
                print(f"\nerror: cannot reach {url}: {exc}", file=sys.stderr, flush=True)
                return 1
            for name in totals:
                totals[name] += int(result.get(name, 0))
            bar.update(len(part))
            bar.set_postfix(new=totals["upserted"], unchanged=totals["unchanged"])
    seconds = time.perf_counter() - started
    print(
        f"done: {len(docs)} documents in {seconds:.1f} s ({len(docs) / seconds:.1f} docs/s) via {server}: "
        f"{totals['upserted']} new or changed ({totals['chunks']} chunks), {totals['unchanged']} unchanged",
        flush=True,
    )
    return 0
