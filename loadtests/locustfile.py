"""Load test of rag-service: chat (JSON and streamed), search and ingestion users, the server's own
per-stage timings as Locust entries, and a pass/fail verdict against the stage budgets.

    make loadtest                      # starts a server if none runs; reports in reports/loadtest/
    .venv/bin/python -m locust -f loadtests/locustfile.py --headless -u 4 -r 2 -t 60s \
        --host http://127.0.0.1:8000 [ChatUser SearchUser IngestUser] [--budget total=9000]

Every answer's ``timings_ms`` becomes Locust entries of type ``STAGE`` named ``stage:embed``,
``stage:retrieve``, ``stage:first_token``, ``stage:generate`` and ``stage:total`` (search requests
add to embed and retrieve only), and each stream's time to its first text event is
``client:ttft``. So Locust's percentiles, CSV and HTML cover them. Locust counts these entries in
its "Aggregated" row too: read request rates from the HTTP rows. At the end the verdict table
compares each stage's percentile with its budget (see ``loadtests/budgets.py``) and the process
exits 1 if a budget is broken or HTTP errors exceed ``--max-error-rate``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.exception import StopUser

from loadtests.budgets import (
    DEFAULT_BUDGETS_FILE,
    PERCENTILES,
    STAGES,
    judge_stages,
    parse_overrides,
    read_budgets_file,
    render,
    resolve_budgets,
    verdict,
)

log = logging.getLogger("loadtest")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_QUESTIONS = Path(__file__).with_name("questions.jsonl")
STAGE_TYPE = "STAGE"
CHAT_MODEL = "smollm2-135m-instruct"  # what /v1/models names first (read at start; this if it cannot)
CLIENT_TYPE = "CLIENT"

QUESTIONS: list[str] = []
INGEST = {"enabled": False, "reason": "not probed yet"}
CPU = {"started": 0.0, "cpu": 0.0}
SERVER_BUDGETS: dict[str, Any] | None = None
DEGRADED: dict[str, int] = {}  # answers the server marked degraded (budgets feature), by reason


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("rag-service")
    group.add_argument("--questions", default=str(DEFAULT_QUESTIONS), help="JSON Lines, one question each")
    group.add_argument(
        "--dataset",
        default="",
        help="use the queries of this dataset in the shared data folder instead (e.g. scifact)",
    )
    group.add_argument(
        "--shared-data",
        default=os.environ.get("RAG_SHARED_DATA", str(REPO.parent / "shared" / "data")),
        help="the shared evaluation data folder",
    )
    group.add_argument("--budgets-file", default=str(DEFAULT_BUDGETS_FILE), help="budgets (ms) per stage")
    group.add_argument("--budget", default="", help="override budgets: 'embed=40,total=9000' (ms)")
    group.add_argument("--budget-percentile", default="p95", choices=sorted(PERCENTILES))
    group.add_argument("--max-error-rate", type=float, default=0.01, help="largest share of failed requests")
    group.add_argument("--max-tokens", type=int, default=0, help="answer length; 0 = the server's default")
    group.add_argument("--ingest-batch", type=int, default=4, help="documents per POST /v1/documents")
    group.add_argument("--api-key", default=os.environ.get("RAG_API_KEY", ""), help="for write endpoints")
    group.add_argument("--verdict-json", default="", help="also write the verdict to this JSON file")


def load_questions(options: Any) -> list[str]:
    if options.dataset:
        path = Path(options.shared_data) / options.dataset / "queries.jsonl"
        key = "text"
    else:
        path, key = Path(options.questions), "question"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    questions = [str(row[key]) for row in lines]
    if not questions:
        raise SystemExit(f"no questions in {path}")
    return questions


def _post_json(url: str, body: dict[str, Any], api_key: str) -> int:
    """A plain request outside Locust's statistics (probes)."""
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _server_budgets(host: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{host}/readyz", timeout=10) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, ValueError) as exc:
        log.warning("could not read %s/readyz (%s): budgets come from the file/options", host, exc)
        return None
    budgets = body.get("budgets_ms")
    return budgets if isinstance(budgets, dict) else None


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    global SERVER_BUDGETS
    options = environment.parsed_options
    assert options is not None, "run through Locust's command line"
    QUESTIONS[:] = load_questions(options)
    host = (environment.host or "").rstrip("/")
    SERVER_BUDGETS = _server_budgets(host)
    # The documents API may not exist on this server yet: probe it once, outside the statistics.
    status = _post_json(f"{host}/v1/documents", {"documents": []}, options.api_key)
    if status in (404, 405):
        INGEST.update(enabled=False, reason=f"POST /v1/documents answered {status}: no ingestion API")
    elif status == 401:
        INGEST.update(enabled=False, reason="POST /v1/documents needs an API key (--api-key / RAG_API_KEY)")
    else:
        INGEST.update(enabled=True, reason="")
    CPU.update(started=time.perf_counter(), cpu=_cpu_seconds())


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _report(environment: Environment, request_type: str, name: str, ms: float) -> None:
    environment.events.request.fire(
        request_type=request_type, name=name, response_time=ms, response_length=0, exception=None, context={}
    )


def count_degraded(answer: dict[str, Any]) -> None:
    if answer.get("degraded"):
        reason = str(answer.get("degraded_reason") or "unknown")
        DEGRADED[reason] = DEGRADED.get(reason, 0) + 1


def report_timings(environment: Environment, timings: dict[str, Any], stages: tuple[str, ...]) -> None:
    for stage in stages:
        value = timings.get(stage)
        if isinstance(value, int | float):
            _report(environment, STAGE_TYPE, f"stage:{stage}", float(value))


def _sse_events(resp: Any, started: float, first: bytes = b"") -> list[bytes] | None:
    """The rest of a streamed response's events (after ``first``), timed as the whole request (Locust
    timed only up to the headers); None, with the request failed, unless it ends with ``[DONE]``."""
    rest = b"".join(
        c if isinstance(c, bytes) else c.encode()
        for c in resp.iter_content(chunk_size=1 << 16, decode_content=False)
    )
    resp.request_meta["response_time"] = (time.perf_counter() - started) * 1000
    events_ = [frame.removeprefix(b"data: ") for frame in (first + rest).split(b"\n\n") if frame.strip()]
    if not events_ or events_[-1] != b"[DONE]":
        resp.failure("stream did not end with [DONE]")
        return None
    return events_


class _RagUser(FastHttpUser):
    abstract = True
    network_timeout = 300.0  # a 16-user burst of answers on 2 cores can take minutes
    connection_timeout = 30.0

    def ask_body(self, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"question": random.choice(QUESTIONS), "stream": stream}
        if self.environment.parsed_options.max_tokens:
            body["max_tokens"] = self.environment.parsed_options.max_tokens
        return body


class ChatUser(_RagUser):
    """A person in a chat window: mostly streamed answers, some plain JSON ones, through our own API
    (``/v1/ask``) and the OpenAI-compatible one (``/v1/chat/completions``, as chat frontends call it)."""

    weight = 3
    wait_time = between(1, 3)

    def on_start(self) -> None:
        key = self.environment.parsed_options.api_key
        self.headers = {"authorization": f"Bearer {key}"} if key else {}
        self.model = CHAT_MODEL
        resp = self.client.get("/v1/models", headers=self.headers, name="/v1/models")
        if resp.status_code == 200 and resp.json().get("data"):
            self.model = str(resp.json()["data"][0]["id"])  # the generator comes first

    def chat_body(self, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": random.choice(QUESTIONS)}],
            "stream": stream,
        }
        if self.environment.parsed_options.max_tokens:
            body["max_tokens"] = self.environment.parsed_options.max_tokens
        return body

    @task(1)
    def chat(self) -> None:
        self.answer("/v1/chat/completions", self.chat_body(stream=False))

    @task(3)
    def chat_stream(self) -> None:
        started = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions",
            json=self.chat_body(stream=True),
            headers=self.headers,
            name="/v1/chat/completions [stream]",
            stream=True,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            events_ = _sse_events(resp, started)
            if events_ is None:
                return
            chunks = [json.loads(e) for e in events_[:-1]]
            finish = [c for c in chunks if (c.get("choices") or [{}])[0].get("finish_reason")]
            if not finish:
                resp.failure(f"stream ended without a finish_reason chunk: {events_[-2][:200]!r}")
                return
            resp.success()
        count_degraded(finish[-1])
        report_timings(self.environment, finish[-1].get("timings_ms", {}), STAGES)

    @task(1)
    def ask(self) -> None:
        self.answer("/v1/ask", self.ask_body(stream=False))

    def answer(self, path: str, body: dict[str, Any]) -> None:
        """A non-streamed answer: its degraded flag and stage timings are counted (both APIs carry them)."""
        with self.client.post(path, json=body, headers=self.headers, name=path, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            answer = resp.json()
            count_degraded(answer)
            report_timings(self.environment, answer.get("timings_ms", {}), STAGES)

    @task(3)
    def ask_stream(self) -> None:
        started = time.perf_counter()
        with self.client.post(
            "/v1/ask",
            json=self.ask_body(stream=True),
            name="/v1/ask [stream]",
            stream=True,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            # The body's first byte is the first event, sent when the first token is out.
            first = next(resp.iter_content(chunk_size=1, decode_content=False), b"")
            ttft_ms = (time.perf_counter() - started) * 1000
            events_ = _sse_events(resp, started, first)
            if events_ is None:
                return
            last = json.loads(events_[-2]) if len(events_) > 1 else {}
            if last.get("type") != "done":
                resp.failure(f"stream ended without a done event: {str(last)[:200]}")
                return
            resp.success()
        if json.loads(events_[0]).get("type") == "delta":
            _report(self.environment, CLIENT_TYPE, "client:ttft", ttft_ms)
        count_degraded(last)
        report_timings(self.environment, last.get("timings_ms", {}), STAGES)


class SearchUser(_RagUser):
    """Retrieval only (a search box, or another service calling us for passages)."""

    weight = 2
    wait_time = between(0.5, 1.5)

    @task
    def search(self) -> None:
        query = random.choice(QUESTIONS)
        with self.client.post(
            "/v1/search", json={"query": query}, name="/v1/search", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
                return
            report_timings(self.environment, r.json().get("timings_ms", {}), ("embed", "retrieve"))


class IngestUser(_RagUser):
    """Batches of new documents through ``POST /v1/documents``, deleted again when the user stops.

    Disabled (with the reason logged once) when the server has no documents API or needs a key."""

    weight = 1
    wait_time = between(2, 5)

    def on_start(self) -> None:
        self.ids: list[str] = []
        key = self.environment.parsed_options.api_key
        self.headers = {"authorization": f"Bearer {key}"} if key else {}

    @task
    def ingest(self) -> None:
        if not INGEST["enabled"]:
            log.warning("IngestUser disabled: %s", INGEST["reason"])
            raise StopUser()  # quietly ends this user (raised from a task, Locust logs no traceback)
        batch = self.environment.parsed_options.ingest_batch
        docs = []
        for _ in range(batch):
            doc_id = f"loadtest:{uuid.uuid4().hex[:12]}"
            # Text made of real questions, so the encoder sees ordinary sentences.
            text = " ".join(random.choices(QUESTIONS, k=6))
            docs.append({"id": doc_id, "title": "load test document", "text": text})
        with self.client.post(
            "/v1/documents",
            json={"documents": docs},
            headers=self.headers,
            name="/v1/documents",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            self.ids += [d["id"] for d in docs]

    def on_stop(self) -> None:
        for doc_id in getattr(self, "ids", []):
            self.client.delete(f"/v1/documents/{doc_id}", headers=self.headers, name="/v1/documents/{id}")


def _percentiles(environment: Environment) -> dict[str, tuple[int, float, float, float]]:
    out: dict[str, tuple[int, float, float, float]] = {}
    for (name, method), entry in environment.stats.entries.items():
        if method in (STAGE_TYPE, CLIENT_TYPE) and entry.num_requests:
            key = name.split(":", 1)[1] if method == STAGE_TYPE else name
            out[key] = (
                entry.num_requests,
                *(float(entry.get_response_time_percentile(q)) for q in PERCENTILES.values()),
            )  # type: ignore[assignment]
    return out


@events.quitting.add_listener
def _verdict(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    wall = max(time.perf_counter() - CPU["started"], 1e-9)
    cpu_share = (_cpu_seconds() - CPU["cpu"]) / wall
    budgets = resolve_budgets(
        parse_overrides(options.budget), SERVER_BUDGETS, read_budgets_file(Path(options.budgets_file))
    )
    http = [
        e for (_, method), e in environment.stats.entries.items() if method not in (STAGE_TYPE, CLIENT_TYPE)
    ]
    v = verdict(
        judge_stages(_percentiles(environment), budgets, options.budget_percentile),
        options.budget_percentile,
        requests=sum(e.num_requests for e in http),
        failures=sum(e.num_failures for e in http),
        max_error_rate=options.max_error_rate,
    )
    lines = [
        render(v),
        f"Locust's own CPU: {cpu_share:.1%} of one core over {wall:.0f} s "
        f"({cpu_share / (psutil.cpu_count() or 1):.1%} of this machine's {psutil.cpu_count()} CPUs)",
    ]
    if DEGRADED:
        lines.append(f"Degraded answers (a budget cut them short): {DEGRADED}")
    if not INGEST["enabled"]:
        lines.append(f"IngestUser: disabled ({INGEST['reason']})")
    print("\n" + "\n".join(lines), flush=True)
    if options.verdict_json:
        record = {
            **v.to_json(),
            "locust_cpu_share_of_one_core": cpu_share,
            "ingest": dict(INGEST),
            "degraded": dict(DEGRADED),
        }
        Path(options.verdict_json).write_text(json.dumps(record, indent=2))
    environment.process_exit_code = 0 if v.passed else 1
