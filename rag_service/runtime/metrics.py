"""Prometheus collectors of the service, rendered by ``GET /metrics`` in the text format.

A leaf module: it imports nothing of ours, and components receive a ``Metrics`` (or nothing) rather
than importing it. Each ``Metrics`` has its own registry, so several apps in one process (tests)
do not collide; ``render`` appends the process-wide default registry, where vLLM registers its own
``vllm:*`` engine metrics (running/waiting requests, tokens, aborts by finish reason).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Seconds: from sub-millisecond (retrieve) to the longest total deadline worth distinguishing.
STAGE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    8.0,
    10.0,
    15.0,
    30.0,
)
TOKEN_BUCKETS = (0, 1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_seconds = Histogram(
            "rag_stage_seconds",
            "Wall time of each pipeline stage (first_token and total are measured from the request's start; "
            "retrieve_dense and retrieve_lexical run inside retrieve).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "rag_requests", "Finished requests by route and outcome.", ["route", "outcome"], registry=r
        )
        self.degraded = Counter(
            "rag_degraded_answers", "Answers cut short by a budget, by the stage cut.", ["stage"], registry=r
        )
        self.timeouts = Counter(
            "rag_stage_timeouts", "Requests failed because a stage ran out of budget.", ["stage"], registry=r
        )
        self.fallbacks = Counter(
            "rag_retrieval_fallbacks",
            "Hybrid searches answered from one list alone, by reason: the dense list (lexical_late, "
            "lexical_failed), the lexical list (embed_late).",
            ["reason"],
            registry=r,
        )
        self.aborts = Counter(
            "rag_generation_aborts",
            "Generations aborted in vLLM, by reason (first_token, generate, client_disconnect).",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge("rag_in_flight_requests", "Requests admitted and running.", registry=r)
        self.queued = Gauge("rag_queued_requests", "Requests waiting for an admission slot.", registry=r)
        self.embed_queue = Gauge(
            "rag_embed_queue_length", "Questions waiting in the embedding micro-batch queue.", registry=r
        )
        self.embed_batch = Histogram(
            "rag_embed_batch_size", "Questions encoded per forward pass.", buckets=BATCH_BUCKETS, registry=r
        )
        self.embed_dropped = Counter(
            "rag_embed_dropped",
            "Questions dropped from the embedding queue because their deadline had passed.",
            registry=r,
        )
        self.context_tokens = Histogram(
            "rag_context_tokens",
            "Generator tokens of passages per prompt.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Histogram(
            "rag_generated_tokens", "Tokens generated per answer.", buckets=TOKEN_BUCKETS, registry=r
        )
        self.index_passages = Gauge("rag_index_passages", "Passages in the served index.", registry=r)
        self.engine_unfinished = Gauge(
            "rag_engine_unfinished_requests",
            "Requests vLLM's engine still holds (0 after an abort took effect, when idle).",
            registry=r,
        )
        self.cold_start = Gauge(
            "rag_cold_start_seconds", "Seconds from start until ready (warm-up included).", registry=r
        )
        self.gc_pause = Histogram(
            "rag_gc_pause_seconds",
            "Garbage collections of this process (each pauses every request), by generation.",
            ["generation"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "rag_answer_cache_hits",
            "Answers reused instead of generated, by where from: stored (the cache) or in_flight (an "
            "identical request generating it at the time, waited for).",
            ["source"],
            registry=r,
        )
        self.cache_misses = Counter(
            "rag_answer_cache_misses",
            "Deterministic requests (temperature 0 or a seed) the answer cache could not answer: generated.",
            registry=r,
        )
        self.cache_evictions = Counter(
            "rag_answer_cache_evictions",
            "Answers dropped from the cache to stay within its bounds.",
            registry=r,
        )
        self.cache_entries = Gauge(
            "rag_answer_cache_entries", "Answers kept in the answer cache.", registry=r
        )
        self.cache_bytes = Gauge(
            "rag_answer_cache_bytes",
            "Bytes the kept answers take (RAG_CACHE__MAX_BYTES bounds it).",
            registry=r,
        )
        self.gc_frozen = Gauge(
            "rag_gc_frozen_objects",
            "Start-up objects exempted from garbage collection after warm-up (gc.freeze).",
            registry=r,
        )

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def request_done(self, route: str, outcome: str) -> None:
        self.requests.labels(route, outcome).inc()

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Make ``gauge`` read its value from a component at scrape time."""
        gauge.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(REGISTRY)
