"""``distilserve serve``: resolve the models, build the app, run uvicorn (uvloop, httptools)."""

from __future__ import annotations

import logging

import uvicorn
from starlette.types import ASGIApp

from models.bundle import MANIFEST_NAME, load_manifest
from models.errors import DistilserveError
from models.export.default_model import DEFAULT_BUNDLE_NAME, default_bundle_dir, ensure_default_bundle
from server.app import build_app
from server.http_protocol import guarded_protocol
from server.settings import ModelSpec, ServerSettings

__all__ = ["ServerSettings", "default_model_specs", "run"]

logger = logging.getLogger(__name__)

# Shipped with the repository (see model-zoo/), so a fresh clone classifies sentiment and
# answers questions at once.
DEFAULT_ZOO_MODELS = {"sst2-sentiment": "sst2-minilm-l3-int8", "squad-reader": "squad-minilm-l3-int8"}


def default_model_specs(settings: ServerSettings) -> list[ModelSpec]:
    """The models served when none is named: the embedding default (built on first use), the
    shipped sentiment classifier and the shipped SQuAD reader."""
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


def uvicorn_config(app: ASGIApp, settings: ServerSettings, *, port: int | None = None) -> uvicorn.Config:
    """uvicorn (uvloop, httptools) with the connection guards of ``server.http_protocol``."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        loop="uvloop",
        http=guarded_protocol(
            header_timeout_s=settings.header_read_timeout_s, max_connections=settings.max_connections
        ),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        log_config=None,  # keep the structured logging the CLI configured
        access_log=False,  # RequestMetricsMiddleware logs requests, when asked to
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
    except DistilserveError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    if not specs:
        logger.error("no model to serve: pass --model NAME=BUNDLE_DIR (or allow --build-default)")
        return 2
    app = build_app(settings, specs)
    config = uvicorn_config(app, settings)
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM and SIGINT: stop accepting, finish admitted requests, then run the
    # lifespan's shutdown (which stops the batchers).
    server.run()
    return 0 if server.started else 1
