"""The FastAPI app, built from a list of routers (one per capability) and the server state."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.responses import Response

from distilserve.models import SessionOptions
from distilserve.models.batching import BatchLimits
from distilserve.models.session import cpu_count
from distilserve.server.admission import ClientDisconnectedError
from distilserve.server.batching import BatchPolicy
from distilserve.server.errors import install_error_handlers
from distilserve.server.metrics import ServerMetrics
from distilserve.server.middleware import (
    ArrivalMiddleware,
    BodyLimitMiddleware,
    DeadlineMiddleware,
    ObservingMiddleware,
)
from distilserve.server.observer import build_observer
from distilserve.server.registry import ModelRegistry
from distilserve.server.routing import InferenceRoute
from distilserve.server.service.api_router import docs_router, health_router, info_router, metrics_router
from distilserve.server.service.serving import package_version
from distilserve.server.services import ServerTask, Services
from distilserve.server.settings import ModelSpec, ServerSettings
from distilserve.server.tasks import SERVER_TASKS
from distilserve.server.topology import Topology

logger = logging.getLogger(__name__)

# Every task's routes (``server/tasks.py``), then the service routes.
ROUTERS: tuple[APIRouter, ...] = (
    *(task.router for task in SERVER_TASKS),
    info_router,
    health_router,
    metrics_router,
)


def session_options(settings: ServerSettings) -> SessionOptions:
    threads = settings.intra_op_threads
    if threads == 0 and settings.workers > 1:
        # N workers' thread pools on the same cores would fight; each gets its share.
        threads = max(cpu_count() // settings.workers, 1)
    return SessionOptions(
        intra_op_threads=threads,
        allow_spinning=settings.allow_spinning,
        release_memory=settings.release_memory,
    )


def build_app(
    settings: ServerSettings,
    specs: Sequence[ModelSpec],
    routers: Sequence[APIRouter] = ROUTERS,
    tasks: Sequence[ServerTask] = SERVER_TASKS,
    topology: Topology | None = None,
) -> FastAPI:
    """An app serving ``specs``; models load (and warm up) in the lifespan, before it reports ready."""
    metrics = ServerMetrics()
    observer = build_observer(
        metrics, settings.otlp_endpoint, settings.otlp_protocol, version=package_version("distilserve")
    )
    policy = BatchPolicy(
        limits=BatchLimits(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            batch_overhead_tokens=settings.batch_overhead_tokens,
        ),
        max_wait_ms=settings.max_wait_ms,
        max_queue_tokens=settings.max_queue_tokens,
        memory_release_idle_s=settings.memory_release_idle_s if settings.release_memory else None,
    )
    registry = ModelRegistry(
        specs,
        policy=policy,
        session_options=session_options(settings),
        observer=observer,
        warmup=settings.warmup,
        calibrate=settings.calibrate_batching,
        engine=settings.engine,
        memory_budget_bytes=settings.memory_budget_bytes(),
    )
    # The paths admission guards, which the protocol may refuse before the app sees them (the
    # routers are included without a prefix).
    admitted_paths = frozenset(
        route.path for router in routers for route in router.routes if isinstance(route, InferenceRoute)
    )
    services = Services.build(settings, registry, metrics, observer, tasks, topology, admitted_paths)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        logger.info("server ready", extra={"models": sorted(registry.models)})
        try:
            yield
        finally:
            # uvicorn has stopped accepting and drained admitted requests by the time we get here.
            await registry.stop()
            services.pipeline.close()
            observer.close()  # the spans still queued leave now, within a bounded time
            logger.info("server stopped")

    # FastAPI's own documents are open; behind the key, or off, they are ours or none.
    keyed_docs = settings.docs_access == "protected" and settings.api_key is not None
    own_docs = settings.docs_access == "open" or (settings.docs_access == "protected" and not keyed_docs)
    app = FastAPI(
        title="distilserve",
        summary=(
            "Low-latency inference for distilled transformer models: classification, QA, embeddings, "
            "reranking."
        ),
        version=package_version("distilserve"),
        lifespan=lifespan,
        openapi_url="/openapi.json" if own_docs else None,
        docs_url="/docs" if own_docs else None,
        redoc_url="/redoc" if own_docs else None,
        **native_telemetry_off(),
    )
    app.state.services = services
    for router in routers:
        app.include_router(router)
    if keyed_docs:
        app.include_router(docs_router)
    install_error_handlers(app)

    @app.exception_handler(ClientDisconnectedError)
    async def _client_left(request: object, exc: ClientDisconnectedError) -> Response:
        # Nobody is listening; 499 (nginx's "client closed request") only shows in logs and metrics.
        return Response(status_code=499)

    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        read_timeout_s=settings.body_read_timeout_s,
    )
    app.add_middleware(DeadlineMiddleware, observer=observer)
    app.add_middleware(
        ObservingMiddleware,
        observer=observer,
        timed_paths=admitted_paths,
        access_log=settings.access_log,
    )
    app.add_middleware(ArrivalMiddleware)  # outermost: added last
    return app


def native_telemetry_off() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry (0.16x+), switched off: the observer is the server's one
    source of spans and metrics. Left on, it asks for the global tracer, meter and logger
    providers on every request (environment lookups: 5% of the event loop's time at c=32 in a
    py-spy profile), and where a process sets a global provider it would add spans of its own
    beside the observer's."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}  # a FastAPI without it
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
