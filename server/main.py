"""``distilserve serve``: resolve the models, build the app, run uvicorn (uvloop, httptools)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from distilserve.models.bundle import MANIFEST_NAME, load_manifest
from distilserve.models.errors import DistilserveError
from distilserve.models.export.default_model import (
    DEFAULT_BUNDLE_NAME,
    default_bundle_dir,
    ensure_default_bundle,
)
from distilserve.server.app import build_app
from distilserve.server.gate import Gate
from distilserve.server.http_protocol import guarded_protocol
from distilserve.server.observer import TracingUnavailableError, check_tracing_installed, resolve_endpoint
from distilserve.server.registry import ModelRegistry
from distilserve.server.services import Services
from distilserve.server.settings import ModelSpec, ServerSettings
from distilserve.server.topology import Topology, resolve_topology
from distilserve.server.workers import WorkerSupervisor

__all__ = ["ServerSettings", "default_model_specs", "run"]

logger = logging.getLogger(__name__)

# Shipped with the repository (see model-zoo/), so a fresh clone classifies sentiment, answers
# questions and reranks passages at once. Any bundle in one of these folders is served under its
# name (the reranker: model-zoo/squad-reranker/, or any rerank bundle put in its place).
DEFAULT_ZOO_MODELS = {
    "sst2-sentiment": "sst2-minilm-l3-int8",
    "squad-reader": "squad-minilm-l3-int8",
    "squad-reranker": "squad-reranker",
}


def default_model_specs(settings: ServerSettings) -> list[ModelSpec]:
    """The models served when none is named: the embedding default (built on first use), the
    shipped sentiment classifier, the shipped SQuAD reader and the shipped SQuAD reranker."""
    specs = []
    for name, folder in DEFAULT_ZOO_MODELS.items():
        if (settings.model_zoo / folder / MANIFEST_NAME).is_file():
            specs.append(ModelSpec(name, settings.model_zoo / folder))
    if settings.build_default:
        # Exports MiniLM once (seconds to a minute, with progress in the log); later starts reuse it.
        specs.append(ModelSpec(DEFAULT_BUNDLE_NAME, ensure_default_bundle(settings.cache_dir)))
    elif (default_bundle_dir(settings.cache_dir) / MANIFEST_NAME).is_file():
        specs.append(ModelSpec(DEFAULT_BUNDLE_NAME, default_bundle_dir(settings.cache_dir)))
    return specs


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before shutdown, and a 503 for what outlasts the grace.

    On the first SIGTERM it reports not ready (``/health/ready``: 503 "draining")
    and keeps serving for ``drain_s``, so a load balancer takes it out of rotation before its
    listener closes; then uvicorn's shutdown runs: stop accepting, let admitted requests finish
    for up to ``timeout_graceful_shutdown``. A second signal, or SIGINT, ends the drain at once. Shortly
    before the grace period ends, requests still waiting for the model are answered 503
    ``shutting_down``: uvicorn cancels what is left at the end, and a cancelled request is a 500.
    """

    def __init__(self, config: uvicorn.Config, registry: ModelRegistry, drain_s: float) -> None:
        super().__init__(config)
        self.registry = registry
        self.drain_s = drain_s
        self._drain_ends: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # SIGTERM is how orchestrators stop a server; SIGINT (Ctrl-C) is a person, who waits for nothing.
        if sig == signal.SIGTERM and self._drain_ends is None and self.drain_s > 0 and not self.should_exit:
            self._drain_ends = time.monotonic() + self.drain_s
            self.registry.draining = True
            logger.info("draining before shutdown", extra={"drain_s": self.drain_s})
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_ends is not None and time.monotonic() >= self._drain_ends:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.registry.draining = True
        grace = self.config.timeout_graceful_shutdown
        timer = None
        if grace is not None:
            # Answer first, leaving up to a second for the 503s to be written before uvicorn cancels.
            answer_at = max(grace - min(1.0, grace / 2), 0.0)
            timer = asyncio.get_running_loop().call_later(answer_at, self.registry.abort_admitted)
        try:
            await super().shutdown(sockets=sockets)
        finally:
            if timer is not None:
                timer.cancel()


def uvicorn_server(app: FastAPI, settings: ServerSettings, *, port: int | None = None) -> DrainingServer:
    """The server `distilserve serve` runs: ``uvicorn_config`` with the drain and the 503s."""
    services: Services = app.state.services
    return DrainingServer(uvicorn_config(app, settings, port=port), services.registry, settings.drain_s)


def app_gate(app: ASGIApp) -> Gate | None:
    """The gate ``distilserve.server.http_protocol`` asks before the app (None for an app that
    ``build_app`` did not build: the protocol then answers only ``/health/live`` by itself)."""
    services = getattr(getattr(app, "state", None), "services", None)
    return services.gate if isinstance(services, Services) else None


def uvicorn_config(app: ASGIApp, settings: ServerSettings, *, port: int | None = None) -> uvicorn.Config:
    """uvicorn (uvloop, httptools) with the connection guards of ``distilserve.server.http_protocol``."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        loop="uvloop",
        http=guarded_protocol(
            header_timeout_s=settings.header_read_timeout_s,
            max_connections=settings.max_connections,
            gate=app_gate(app),
        ),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        log_config=None,  # keep the structured logging the CLI configured
        access_log=False,  # ObservingMiddleware logs requests, when asked to
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
        lifespan="on",
    )


def run(settings: ServerSettings) -> int:
    try:
        specs = settings.model_specs or default_model_specs(settings)
        # Fail before binding the port, with the file and the problem, rather than in the lifespan
        # (a traceback and exit 3): the manifest, every listed file inside the folder, and hashes.
        for spec in specs:
            load_manifest(spec.bundle_dir)
        if resolve_endpoint(settings.otlp_endpoint, settings.otlp_protocol) is not None:
            check_tracing_installed()
    except (DistilserveError, TracingUnavailableError, ValueError) as exc:
        logger.error("cannot start: %s", exc)
        return 2
    if not specs:
        logger.error("no model to serve: pass --model NAME=BUNDLE_DIR (or allow --build-default)")
        return 2
    topology = resolve_topology(settings, specs)
    logger.info("topology", extra=topology.describe())
    logger.info(
        "memory",
        extra={
            "release_memory": settings.release_memory,
            "release_idle_s": settings.memory_release_idle_s,
            "budget_mib": None if (budget := settings.memory_budget_bytes()) is None else budget // 2**20,
        },
    )
    # From here on the settings hold what was chosen: N workers, each with its share of threads.
    settings = settings.model_copy(
        update={"workers": topology.workers, "intra_op_threads": topology.intra_op_threads}
    )
    if topology.workers > 1:
        return WorkerSupervisor(settings, lambda sock: serve(settings, specs, [sock], topology)).run()
    return serve(settings, specs, topology=topology)


def serve(
    settings: ServerSettings,
    specs: list[ModelSpec],
    sockets: list[socket.socket] | None = None,
    topology: Topology | None = None,
) -> int:
    """One server process: on ``settings``' host and port, or on ``sockets`` (a worker's)."""
    app = build_app(settings, specs, topology=topology)
    server = uvicorn_server(app, settings)
    # SIGTERM and SIGINT: drain (not ready, still serving), stop accepting, finish admitted
    # requests, then run the lifespan's shutdown (which stops the batchers).
    server.run(sockets=sockets)
    return 0 if server.started else 1
