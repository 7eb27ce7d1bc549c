"""The Ray Serve application (README, "Scaling out"): the same service, its parts as deployments.

- ``Ingress``: the FastAPI app with pipeline, encoder, retriever and a private copy of the index in
  process, replicated and autoscaled on ongoing requests. Admission control stays ours (per replica):
  Serve's ``max_ongoing_requests`` is set to what admission holds (running + queued), so Serve never
  queues in front of a replica that still has room, and ``max_queued_requests`` bounds Serve's own queue
  (503 beyond it). A replica warms up and passes the budget check in its constructor, so Serve routes
  to it only once it is ready; ``check_health`` keeps reporting the service's state.
- ``Generator``: the vLLM engine (our adapter, ``VllmGenerator``), streamed through handles; a stream
  the ingress drops is cancelled, and the cancellation aborts the request in vLLM.
- ``Writer``: the one owner of the SQLite store; publishes snapshot bundles and the changes since a
  sequence number, which every replica pulls (``rag_service/index/follower.py``).

The encoder stays in the ingress process: one handle hop costs about as much as embedding a question
(BENCHMARKS.md, "Scaling out"). Start it with ``make serve-ray`` (deploy/serve.yaml).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from rag_service.api.app import build_app
from rag_service.config import Settings
from rag_service.domain import Document, GenerationChunk
from rag_service.generation.generator import VllmGenerator
from rag_service.runtime.components import Components
from rag_service.runtime.hardware import cpu_features, cuda_bf16, cuda_devices, generator_dtype
from rag_service.runtime.service import Service, State
from rag_service.scaling.remote import RemoteGenerator, ReplicaIndex, coalesced
from rag_service.scaling.writer import EmbeddedDocument, IndexWriter
from rag_service.storage.replication import ChangeBatch
from rag_service.storage.store import WriteResult

log = logging.getLogger(__name__)
REPLICA_HEADER = "x-rag-replica"  # which ingress replica answered (load-sharing tests, debugging)
# Tokens generated within this long of the last streamed message travel together (remote.coalesced;
# BENCHMARKS.md, "Scaling out"): below a person's reading speed, and ray.serve.llm's own default.
STREAM_INTERVAL_S = 0.05


def settings_payload(settings: Settings) -> dict[str, Any]:
    """The driver's settings for every deployment, paths made absolute: replicas may run in another
    working directory, where neither ``.env`` nor relative paths would mean the same."""
    payload = settings.model_dump(mode="json")
    payload["api_key"] = settings.api_key.get_secret_value() if settings.api_key else None
    payload["index"]["dir"] = str(settings.index.dir.resolve())
    payload["encoder"]["onnx_dir"] = str(Path(settings.encoder.onnx_dir).resolve())
    if Path(settings.generator.model).exists():
        payload["generator"]["model"] = str(Path(settings.generator.model).resolve())
    return payload


def settings_from(payload: dict[str, Any]) -> Settings:
    """The settings in a replica, whose process logs our INFO lines too (Ray keeps a worker's root
    logger at WARNING; Serve's own logs go through its own handler)."""
    settings = Settings.model_validate(payload)
    logging.basicConfig(level=settings.server.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return settings


@serve.deployment(name="Writer", num_replicas=1, max_ongoing_requests=64)
class WriterDeployment:
    def __init__(self, payload: dict[str, Any]) -> None:
        from rag_service.embedding.encoder import Encoder

        settings = settings_from(payload)
        self.writer = IndexWriter.open(settings, Encoder(settings.encoder).index_spec())

    async def upsert(self, docs: Sequence[Document]) -> WriteResult:
        return await self.writer.upsert(docs)

    async def delete(self, doc_id: str) -> WriteResult:
        return await self.writer.delete(doc_id)

    async def write_embedded(self, spec: dict[str, Any], items: Sequence[EmbeddedDocument]) -> WriteResult:
        return await self.writer.write_embedded(spec, items)

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        return self.writer.content_hashes(ids)

    def changes_since(self, seq: int) -> ChangeBatch:  # sync: Serve runs it on a thread
        return self.writer.changes_since(seq)

    async def bundle(self) -> bytes:
        return await self.writer.bundle()

    def last_seq(self) -> int:
        return self.writer.last_seq()

    def spec(self) -> dict[str, Any]:
        return self.writer.spec()

    def stats(self) -> dict[str, Any]:
        return self.writer.stats()

    def __del__(self) -> None:
        self.writer.close()


@serve.deployment(name="Generator", num_replicas=1, max_ongoing_requests=64)
class GeneratorDeployment:
    def __init__(self, payload: dict[str, Any]) -> None:
        gen = settings_from(payload).generator
        # The dtype this node runs fast (it may not be the driver's machine), as Service resolves it.
        choice = generator_dtype(gen.dtype, gpus=cuda_devices(), gpu_bf16=cuda_bf16(), cpu=cpu_features())
        log.info("generator dtype %s: %s", choice.dtype, choice.reason)
        self.generator = VllmGenerator.start(gen.model_copy(update={"dtype": choice.dtype}))

    async def stream(self, prompt_ids: list[int], **kwargs: Any) -> AsyncGenerator[GenerationChunk, None]:
        async for chunk in coalesced(self.generator.stream(prompt_ids, **kwargs), STREAM_INTERVAL_S):
            yield chunk

    async def reset_prefix_cache(self) -> None:
        await self.generator.reset_prefix_cache()

    def counts(self) -> dict[str, int]:
        """Requests the engine holds now, and how many were aborted (tests)."""
        return {"unfinished": self.generator.unfinished_requests, "aborted": self.generator.aborted}

    def check_health(self) -> None:
        if not self.generator.healthy:
            raise RuntimeError("the vLLM engine stopped")

    def __del__(self) -> None:
        self.generator.shutdown()


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, payload: dict[str, Any], writer: DeploymentHandle, generator: DeploymentHandle
    ) -> None:
        self.settings = settings_from(payload)
        components = Components(
            start_generator=lambda _settings: RemoteGenerator(generator),
            open_index=lambda settings, spec: ReplicaIndex.open(settings, spec, writer),
        )
        self.service = Service(self.settings, components)
        await self.service.start()  # warm-up and budget check before Serve routes a request here
        if self.service.state is not State.READY:
            raise RuntimeError(f"replica not ready: {self.service.reason}")
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = build_app(self.settings, self.service, start=False)
        replica = self.replica

        @app.middleware("http")
        async def name_the_replica(request: Request, call_next: Any) -> Response:
            response: Response = await call_next(request)
            response.headers[REPLICA_HEADER] = replica
            return response

        return app

    async def check_health(self) -> None:
        self.service.check()
        if self.service.state is not State.READY:
            raise RuntimeError(f"service is {self.service.state.value}: {self.service.reason}")


def build(args: dict[str, Any] | None = None, options: dict[str, dict[str, Any]] | None = None) -> Any:
    """The application ``serve run`` / ``serve deploy`` import (deploy/serve.yaml): settings come from
    the environment and ``.env`` of the process that builds it, like ``rag-service serve``.
    ``options``: per-deployment options by name (``launch.py`` passes the config file's; Serve applies
    them itself when it reads the file)."""
    options = options or {}
    settings = Settings()
    payload = settings_payload(settings)
    adm = settings.admission
    # serve.deployment turns the classes into Deployments (options, bind); mypy sees the classes.
    ingress = Ingress.options(  # type: ignore[attr-defined]
        **{
            "max_ongoing_requests": adm.max_in_flight + adm.max_queue,
            "max_queued_requests": adm.max_queue,
            **options.get("Ingress", {}),
        }
    )
    # Every replica polls the writer (RAG_INDEX__REFRESH_S): no access-log line per poll.
    writer_options = {"logging_config": {"enable_access_log": False}, **options.get("Writer", {})}
    writer = WriterDeployment.options(**writer_options).bind(payload)  # type: ignore[attr-defined]
    generator_options = _with_preload(options.get("Generator", {}), settings)
    generator = GeneratorDeployment.options(**generator_options).bind(payload)  # type: ignore[attr-defined]
    return ingress.bind(payload, writer, generator)


def _with_preload(options: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """tcmalloc and Intel OpenMP preloaded into the generator's process, as ``rag-service serve`` does
    (runtime/preload.py): Ray starts that worker with the runtime environment's variables set."""
    from rag_service.runtime.preload import wanted

    libraries = wanted(settings.generator)
    if not libraries:
        return options
    actor = dict(options.get("ray_actor_options", {}))
    runtime_env = dict(actor.get("runtime_env", {}))
    runtime_env["env_vars"] = {"LD_PRELOAD": ":".join(libraries), **runtime_env.get("env_vars", {})}
    actor["runtime_env"] = runtime_env
    return {**options, "ray_actor_options": actor}
