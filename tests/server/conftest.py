"""Server fixtures: apps over the tiny bundles, in-process (ASGI) and live (uvicorn on loopback)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from models.batching import EncodedRow
from server.app import build_app
from server.inference import ServerState
from server.settings import ServerSettings
from tests.tiny_models import Arch, TinyTask

BundleMap = dict[tuple[Arch, TinyTask], Path]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test, never from the machine's DISTILSERVE_* variables."""
    import os

    for name in list(os.environ):
        if name.startswith("DISTILSERVE_") and name != "DISTILSERVE_DATA_DIR":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def model_args(tiny_bundles: BundleMap) -> list[str]:
    """One model per task (DistilBERT classification, BERT QA and embeddings: both input layouts)."""
    return [
        f"sentiment={tiny_bundles[('distilbert', 'text-classification')]}",
        f"reader={tiny_bundles[('bert', 'question-answering')]}",
        f"encoder={tiny_bundles[('bert', 'feature-extraction')]}",
    ]


def make_settings(model_args: Sequence[str], **overrides: Any) -> ServerSettings:
    return ServerSettings(model=list(model_args), warmup=False, **overrides)


def state_of(app: FastAPI) -> ServerState:
    state: ServerState = app.state.distilserve
    return state


@asynccontextmanager
async def running_app(
    model_args: Sequence[str], **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan run (models loaded), and an in-process client."""
    settings = make_settings(model_args, **overrides)
    app = build_app(settings, settings.model_specs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://distilserve.test") as client:
            yield app, client


@pytest.fixture
async def app_client(model_args: list[str]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app(model_args) as pair:
        yield pair


def slow_forward(app: FastAPI, model: str, delay_s: float) -> list[list[int]]:
    """Make one model's batches take ``delay_s`` longer; returns the log of batch row lengths."""
    batcher = state_of(app).registry.models[model].batcher
    real_forward = batcher.forward
    log: list[list[int]] = []

    def forward(rows: Sequence[EncodedRow]) -> Sequence[Any]:
        log.append([len(row) for row in rows])
        time.sleep(delay_s)
        return real_forward(rows)

    batcher.forward = forward
    return log


class LiveServer:
    """uvicorn on 127.0.0.1 in a background thread, as a user runs it (uvloop, httptools)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            loop="uvloop",
            http="httptools",
            log_config=None,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live_server(model_args: list[str]) -> Iterator[Callable[..., LiveServer]]:
    """A factory: ``with live_server(**setting_overrides) as server: ...``."""

    @contextmanager
    def start(**overrides: Any) -> Iterator[LiveServer]:
        settings = make_settings(model_args, **overrides)
        with LiveServer(build_app(settings, settings.model_specs)) as server:
            yield server

    yield start  # type: ignore[misc]


async def gather_posts(
    client: httpx.AsyncClient, path: str, bodies: Sequence[dict[str, Any]], **kwargs: Any
) -> list[httpx.Response]:
    return list(await asyncio.gather(*(client.post(path, json=body, **kwargs) for body in bodies)))
