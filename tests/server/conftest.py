"""Server fixtures: apps over the tiny bundles, in-process (ASGI) and live (uvicorn on loopback)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI

from distilserve.models.batching import EncodedRow
from distilserve.server.app import build_app
from distilserve.server.main import uvicorn_server
from distilserve.server.services import Services
from distilserve.server.settings import ServerSettings
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


def state_of(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services


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


@pytest.fixture
async def every_task_app_client(
    model_args: list[str], tiny_rerank_bundles: dict[tuple[Arch, Literal["int8", "none"]], Path]
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The server fixtures' app with a reranker beside the other tasks' models: every inference
    route has a model to answer with."""
    reranker = f"reranker={tiny_rerank_bundles[('bert', 'int8')]}"
    async with running_app([*model_args, reranker]) as pair:
        yield pair


def slow_forward(app: FastAPI, model: str, delay_s: float) -> list[list[int]]:
    """Make one model's batches take ``delay_s`` longer; returns the log of batch row lengths.

    For load, never for ordering: a test that needs "this batch is running" uses ``hold_forward``.
    """
    batcher = state_of(app).registry.models[model].batcher
    real_forward = batcher.forward
    log: list[list[int]] = []

    def forward(rows: Sequence[EncodedRow]) -> Sequence[Any]:
        log.append([len(row) for row in rows])
        time.sleep(delay_s)
        return real_forward(rows)

    batcher.forward = forward
    return log


class HeldForward:
    """A model whose batches wait for ``release``: tests order their steps on its events.

    ``entered`` is set when the first batch reaches the model (it then holds the inference
    thread), so "the blocker's batch is running" is an event, not a guess about how long a
    sleep must be on a loaded machine.
    """

    def __init__(self, real_forward: Callable[[Sequence[EncodedRow]], Sequence[Any]]) -> None:
        self.real_forward = real_forward
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, rows: Sequence[EncodedRow]) -> Sequence[Any]:
        self.batches.append([len(row) for row in rows])
        self.entered.set()
        if not self.release.wait(WAIT_S):
            raise RuntimeError("the test never released the held batch")
        return self.real_forward(rows)

    async def until_entered(self) -> None:
        await asyncio.to_thread(self.wait_entered)

    def wait_entered(self) -> None:
        if not self.entered.wait(WAIT_S):
            raise AssertionError("no batch reached the model")


def hold_forward(app: FastAPI, model: str) -> HeldForward:
    batcher = state_of(app).registry.models[model].batcher
    held = HeldForward(batcher.forward)
    batcher.forward = held
    return held


# Long enough never to decide a test on a loaded machine; a wait only ends this early on a bug.
WAIT_S = 30.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Block until ``condition()`` holds: polls a state, so the order of steps never rests on timing."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


async def until(condition: Callable[[], bool], what: str) -> None:
    """``wait_until`` for the event loop: yields to it between checks."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


def metric(app: FastAPI, name: str, **labels: str) -> float:
    """A sample of the app's Prometheus registry (0 when it was never recorded)."""
    value = state_of(app).metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class LiveServer:
    """uvicorn on 127.0.0.1 in a background thread, as `distilserve serve` runs it."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        # As `distilserve serve` configures it (connection guards included), on a free loopback port.
        settings = state_of(app).settings
        assert settings.host == "127.0.0.1", "live test servers listen on loopback only"
        self.server = uvicorn_server(app, settings, port=self.port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def engine_of(self, model: str) -> str:
        """The engine the server runs ``model`` on, from /info: expected outputs are computed on
        the same one (``engine auto`` may choose the bundle's OpenVINO form, whose int8 differs)."""
        info = httpx.get(f"{self.url}/info").json()
        return next(str(entry["engine"]["engine"]) for entry in info["models"] if entry["name"] == model)

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
