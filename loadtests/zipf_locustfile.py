"""A chat crowd that repeats itself: ``/v1/ask`` questions drawn from a Zipf distribution over a question
set (the k-th most asked question is asked in proportion to 1 / k^s), half streamed, half JSON.
``benchmarks/answer_cache.py`` drives it, with the answer cache on and off.

    .venv/bin/python -m locust -f loadtests/zipf_locustfile.py --headless -u 4 -r 4 -t 60s \
        --host http://127.0.0.1:8000 --records records.jsonl [--zipf-s 1.1] [--max-tokens 0]

Every answer is written to ``--records`` (JSON Lines, at the end): route, whether it was streamed and
cached, the client's end-to-end and first-event times, and the server's ``timings_ms``. Each user
draws from its own seeded generator (``--seed`` plus its number), so two runs ask the same sequences.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task
from locust.env import Environment

DEFAULT_QUESTIONS = Path(__file__).with_name("questions.jsonl")
QUESTIONS: list[str] = []
CUMULATIVE: list[float] = []
RECORDS: list[dict[str, Any]] = []
USER_NUMBERS = itertools.count()


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("zipf")
    group.add_argument("--questions", default=str(DEFAULT_QUESTIONS), help="JSON Lines with a 'question'")
    group.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent s (larger: fewer distinct)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--stream-share", type=float, default=0.5, help="share of streamed requests")
    group.add_argument("--max-tokens", type=int, default=0, help="answer length; 0 = the server's default")
    group.add_argument("--records", default="", help="write every answer's record here (JSON Lines)")


def zipf_cumulative(n: int, s: float) -> list[float]:
    """Cumulative weights of ranks 1..n under Zipf's law with exponent ``s``."""
    return list(itertools.accumulate(1 / k**s for k in range(1, n + 1)))


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    assert options is not None, "run through Locust's command line"
    rows = [json.loads(line) for line in Path(options.questions).read_text().splitlines() if line.strip()]
    QUESTIONS[:] = [str(r["question"]) for r in rows]
    CUMULATIVE[:] = zipf_cumulative(len(QUESTIONS), options.zipf_s)


@events.test_stop.add_listener
def _test_stop(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is not None and options.records:
        Path(options.records).write_text("".join(json.dumps(r) + "\n" for r in RECORDS))


class ZipfAskUser(FastHttpUser):
    wait_time = constant(0)  # closed loop: each user asks again as soon as answered (capacity, not pacing)
    network_timeout = 300.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random(options.seed * 1000 + next(USER_NUMBERS))

    @task
    def ask(self) -> None:
        options = self.environment.parsed_options
        question = self.rng.choices(QUESTIONS, cum_weights=CUMULATIVE)[0]
        stream = self.rng.random() < options.stream_share
        body: dict[str, Any] = {"question": question, "stream": stream}
        if options.max_tokens:
            body["max_tokens"] = options.max_tokens
        name = "/v1/ask [stream]" if stream else "/v1/ask"
        started = time.perf_counter()
        first_event: float | None = None
        with self.client.post("/v1/ask", json=body, name=name, stream=stream, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                RECORDS.append({"question": question, "stream": stream, "status": resp.status_code})
                return
            if stream:
                raw = b""
                for chunk in resp.iter_content(chunk_size=1 << 16, decode_content=False):
                    if first_event is None:
                        first_event = time.perf_counter()
                    raw += chunk if isinstance(chunk, bytes) else chunk.encode()
                frames = [f.removeprefix(b"data: ") for f in raw.split(b"\n\n") if f.strip()]
                if not frames or frames[-1] != b"[DONE]":
                    resp.failure("stream did not end with [DONE]")
                    return
                answer = json.loads(frames[-2])
                if answer.get("type") != "done":
                    resp.failure(f"stream ended with {frames[-2][:200]!r}")
                    return
            else:
                answer = resp.json()
            took = (time.perf_counter() - started) * 1000
            resp.request_meta["response_time"] = took  # a stream: to its last byte, not its headers
            resp.success()
        RECORDS.append(
            {
                "question": question,
                "stream": stream,
                "status": 200,
                "cached": bool(answer.get("cached")),
                "degraded": bool(answer.get("degraded")),
                "client_ms": took,
                "client_first_event_ms": (first_event - started) * 1000 if first_event else None,
                "timings_ms": answer.get("timings_ms", {}),
            }
        )
