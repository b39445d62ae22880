"""Behaviour under load: batching over HTTP, queue limits, deadlines, disconnects, health."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable

import httpx
import numpy as np

from models import load_model
from models.tasks import EmbedParams
from server.app import build_app
from tests.server.conftest import (
    BundleMap,
    LiveServer,
    gather_posts,
    make_settings,
    running_app,
    slow_forward,
    state_of,
)
from tests.tiny_models import corpus


def mixed_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sentences = corpus(200, seed=seed)
    return [" ".join(rng.sample(sentences, rng.randint(1, 4))) for _ in range(count)]


async def test_concurrent_requests_are_batched_and_match_unbatched_results(
    model_args: list[str], tiny_bundles: BundleMap
) -> None:
    texts = mixed_texts(48)
    async with running_app(model_args) as (app, client):
        batches = slow_forward(app, "encoder", 0.02)  # slow enough that requests pile up
        responses = await gather_posts(client, "/v1/embeddings", [{"input": text} for text in texts])
    assert all(response.status_code == 200 for response in responses)
    assert len(batches) < len(texts)
    assert max(len(batch) for batch in batches) > 1
    library = load_model(tiny_bundles[("bert", "feature-extraction")])
    for text, response in zip(texts, responses, strict=True):
        (expected,) = library.predict([text], EmbedParams())  # one at a time: no batching
        served = np.array(response.json()["data"][0]["embedding"], dtype=np.float32)
        np.testing.assert_allclose(served, expected, atol=2e-5)


async def test_a_full_queue_answers_429_and_health_stays_up(model_args: list[str]) -> None:
    async with running_app(model_args, max_queue_requests=2) as (app, client):
        slow_forward(app, "sentiment", 0.2)
        flood = asyncio.gather(
            *(client.post("/v1/classify", json={"input": f"text number {index}"}) for index in range(12))
        )
        await asyncio.sleep(0.05)
        health = await client.get("/health/ready")
        responses = await flood
    assert health.status_code == 200
    statuses = [response.status_code for response in responses]
    assert 429 in statuses and 200 in statuses
    rejected = next(response for response in responses if response.status_code == 429)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["code"] == "queue_full"


async def test_a_token_budget_of_the_queue_answers_429(model_args: list[str]) -> None:
    async with running_app(model_args, max_queue_tokens=40) as (app, client):
        slow_forward(app, "sentiment", 0.2)
        responses = await gather_posts(
            client, "/v1/classify", [{"input": "a rather long sentence " * 3} for _ in range(8)]
        )
    statuses = {response.status_code for response in responses}
    assert statuses == {200, 429}


async def test_an_expired_deadline_answers_504_and_its_work_is_skipped(model_args: list[str]) -> None:
    async with running_app(model_args) as (app, client):
        batches = slow_forward(app, "sentiment", 0.3)
        blocker = asyncio.ensure_future(client.post("/v1/classify", json={"input": "x"}))
        await asyncio.sleep(0.05)  # the blocker's batch is running
        late = await client.post(
            "/v1/classify", json={"input": "this one will not wait"}, headers={"X-Request-Timeout": "0.05"}
        )
        await blocker
        await asyncio.sleep(0.35)
        metrics = (await client.get("/metrics")).text
    assert late.status_code == 504, late.text
    assert late.json()["error"]["code"] == "deadline_exceeded"
    assert len(batches) == 1  # only the blocker ran
    assert 'distilserve_timed_out_requests_total{model="sentiment"} 1.0' in metrics


async def test_a_bad_timeout_header_is_a_422(app_client: tuple[object, httpx.AsyncClient]) -> None:
    _, client = app_client
    response = await client.post("/v1/classify", json={"input": "x"}, headers={"X-Request-Timeout": "soon"})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "X-Request-Timeout"


def test_a_disconnected_clients_queued_work_is_not_run(live_server: Callable[..., LiveServer]) -> None:
    with live_server() as server:
        batches = slow_forward(server.app, "sentiment", 0.5)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            blocker_done: list[int] = []

            async def blocker() -> None:
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as async_client:
                    response = await async_client.post("/v1/classify", json={"input": "blocker"})
                    blocker_done.append(response.status_code)

            import threading

            thread = threading.Thread(target=lambda: asyncio.run(blocker()))
            thread.start()
            time.sleep(0.15)  # the blocker's batch is running
            body = b'{"input": ["left before its answer", "so did this one"]}'
            with socket.create_connection(("127.0.0.1", server.port)) as raw:
                raw.sendall(
                    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                time.sleep(0.1)  # admitted and queued behind the blocker
            thread.join()
            time.sleep(0.7)
            metrics = client.get("/metrics").text
    assert blocker_done == [200]
    assert len(batches) == 1, batches  # the departed client's rows were never computed
    assert 'distilserve_cancelled_requests_total{model="sentiment"} 1.0' in metrics
    assert 'distilserve_skipped_rows_total{model="sentiment"} 2.0' in metrics


async def test_sigterm_style_shutdown_finishes_admitted_requests(model_args: list[str]) -> None:
    """uvicorn's graceful shutdown waits for in-flight requests; the lifespan then stops batchers."""
    settings = make_settings(model_args)
    server = LiveServer(build_app(settings, settings.model_specs))
    with server:
        slow_forward(server.app, "sentiment", 0.3)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            pending = asyncio.ensure_future(client.post("/v1/classify", json={"input": "finish me"}))
            await asyncio.sleep(0.1)
            server.server.should_exit = True  # what uvicorn's SIGTERM handler sets
            response = await pending
    assert response.status_code == 200
    assert not server.thread.is_alive()
    assert state_of(server.app).registry.ready is False
