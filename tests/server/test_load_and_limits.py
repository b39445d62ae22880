"""Behaviour under load: batching over HTTP, queue limits, deadlines, disconnects, health."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Callable

import httpx
import numpy as np

from distilserve.models import load_model
from distilserve.models.tasks import EmbedParams
from distilserve.server.app import build_app
from tests.server.conftest import (
    WAIT_S,
    BundleMap,
    LiveServer,
    gather_posts,
    hold_forward,
    make_settings,
    metric,
    running_app,
    slow_forward,
    state_of,
    until,
    wait_until,
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
        held = hold_forward(app, "sentiment")
        flood = asyncio.gather(
            *(client.post("/v1/classify", json={"input": f"text number {index}"}) for index in range(12))
        )
        # No request can finish while the batch is held, so exactly two are admitted and ten refused.
        await until(
            lambda: (
                metric(app, "distilserve_rejected_requests_total", model="", reason="queue_requests") == 10
            ),
            "ten requests refused",
        )
        health = await client.get("/health/ready")
        held.release.set()
        responses = await flood
    assert health.status_code == 200
    statuses = [response.status_code for response in responses]
    assert 429 in statuses and 200 in statuses
    rejected = next(response for response in responses if response.status_code == 429)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["code"] == "queue_full"


async def test_a_token_budget_of_the_queue_answers_429(model_args: list[str]) -> None:
    # One row per batch, so the held first batch cannot take the whole queue with it.
    async with running_app(model_args, max_queue_tokens=40, max_batch_size=1) as (app, client):
        held = hold_forward(app, "sentiment")
        posts = gather_posts(
            client, "/v1/classify", [{"input": "a rather long sentence " * 3} for _ in range(8)]
        )
        flood = asyncio.ensure_future(posts)
        rejected = "distilserve_rejected_requests_total"
        await until(
            lambda: metric(app, rejected, model="sentiment", reason="queue_tokens") >= 1,
            "a request refused for the queue's tokens",
        )
        held.release.set()
        responses = await flood
    statuses = {response.status_code for response in responses}
    assert statuses == {200, 429}


async def test_an_expired_deadline_answers_504_and_its_work_is_skipped(model_args: list[str]) -> None:
    async with running_app(model_args) as (app, client):
        held = hold_forward(app, "sentiment")
        blocker = asyncio.ensure_future(client.post("/v1/classify", json={"input": "x"}))
        await held.until_entered()  # the blocker's batch is running, and stays so until released
        late = await client.post(
            "/v1/classify", json={"input": "this one will not wait"}, headers={"X-Request-Timeout": "0.05"}
        )
        held.release.set()
        await blocker
        batcher = state_of(app).registry.models["sentiment"].batcher
        await until(lambda: batcher.queued_rows == 0, "the expired row dropped")
        metrics = (await client.get("/metrics")).text
    assert late.status_code == 504, late.text
    assert late.json()["error"]["code"] == "deadline_exceeded"
    assert len(held.batches) == 1  # only the blocker ran
    assert 'distilserve_timed_out_requests_total{model="sentiment"} 1.0' in metrics


async def test_a_bad_timeout_header_is_a_422(app_client: tuple[object, httpx.AsyncClient]) -> None:
    _, client = app_client
    response = await client.post("/v1/classify", json={"input": "x"}, headers={"X-Request-Timeout": "soon"})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "X-Request-Timeout"


def test_a_disconnected_clients_queued_work_is_not_run(live_server: Callable[..., LiveServer]) -> None:
    with live_server() as server:
        held = hold_forward(server.app, "sentiment")
        batcher = state_of(server.app).registry.models["sentiment"].batcher
        with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
            blocker_done: list[int] = []

            def blocker() -> None:
                with httpx.Client(base_url=server.url, timeout=WAIT_S) as blocking_client:
                    response = blocking_client.post("/v1/classify", json={"input": "blocker"})
                    blocker_done.append(response.status_code)

            thread = threading.Thread(target=blocker)
            thread.start()
            held.wait_entered()  # the blocker's batch is running, held until released
            body = b'{"input": ["left before its answer", "so did this one"]}'
            with socket.create_connection(("127.0.0.1", server.port)) as raw:
                raw.sendall(
                    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                wait_until(lambda: batcher.queued_rows == 2, "both rows queued behind the blocker")
            # The server sees the connection close and cancels the request before the model is free.
            wait_until(
                lambda: metric(server.app, "distilserve_cancelled_requests_total", model="sentiment") == 1,
                "the departed request cancelled",
            )
            held.release.set()
            thread.join()
            wait_until(lambda: batcher.queued_rows == 0, "the departed rows dropped")
            metrics = client.get("/metrics").text
    assert blocker_done == [200]
    assert len(held.batches) == 1, held.batches  # the departed client's rows were never computed
    assert 'distilserve_cancelled_requests_total{model="sentiment"} 1.0' in metrics
    assert 'distilserve_skipped_rows_total{model="sentiment"} 2.0' in metrics


async def test_sigterm_style_shutdown_finishes_admitted_requests(model_args: list[str]) -> None:
    """uvicorn's graceful shutdown waits for in-flight requests; the lifespan then stops batchers."""
    settings = make_settings(model_args)
    server = LiveServer(build_app(settings, settings.model_specs))
    with server:
        held = hold_forward(server.app, "sentiment")
        async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as client:
            pending = asyncio.ensure_future(client.post("/v1/classify", json={"input": "finish me"}))
            await held.until_entered()  # admitted, and its batch is running
            server.server.should_exit = True  # what uvicorn's SIGTERM handler sets
            # Release only once uvicorn has stopped listening: the request is in flight at shutdown.
            await until(
                lambda: (
                    bool(server.server.servers)
                    and not any(listener.is_serving() for listener in server.server.servers)
                ),
                "uvicorn stopped accepting",
            )
            held.release.set()
            response = await pending
    assert response.status_code == 200
    assert not server.thread.is_alive()
    assert state_of(server.app).registry.ready is False
