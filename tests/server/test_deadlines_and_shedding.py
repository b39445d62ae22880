"""Deadlines count from arrival and are checked at every hand-off; overload is refused before the
body is read; one model's backlog does not hold up another's.

Time moves on a movable clock (``distilserve.server.clock.now``), never by sleeping; the order of steps
rests on events (a held batch) and on states polled until they hold.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from distilserve.models import ModelRuntime
from distilserve.server import clock
from tests.server.conftest import (
    WAIT_S,
    hold_forward,
    metric,
    running_app,
    slow_forward,
    state_of,
    until,
)

JSON = {"content-type": "application/json"}


class MovableClock:
    """The server's deadline clock, which a test moves forward (from any thread) instead of waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def movable_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[MovableClock]:
    moved = MovableClock()
    monkeypatch.setattr(clock, "now", moved)
    yield moved


async def test_the_deadline_counts_from_arrival_not_from_the_handler(
    model_args: list[str], movable_clock: MovableClock
) -> None:
    async with running_app(model_args) as (app, client):
        batches = slow_forward(app, "sentiment", 0.0)  # records every batch, adds no delay

        async def slow_body() -> AsyncIterator[bytes]:
            yield b'{"input": '
            movable_clock.advance(10.0)  # the rest of the body takes 10 s to arrive
            yield b'"a body that came late"}'

        headers = JSON | {"X-Request-Timeout": "5"}
        response = await client.post("/v1/classify", content=slow_body(), headers=headers)
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert batches == []  # no work started for a request already late


@pytest.mark.parametrize("stage", ["prepare", "finish"])
async def test_a_deadline_passing_in_tokenization_or_post_processing_is_a_504(
    model_args: list[str], movable_clock: MovableClock, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    real = getattr(ModelRuntime, stage)

    def late(self: ModelRuntime, *args: Any) -> Any:
        result = real(self, *args)
        movable_clock.advance(10.0)  # this step took 10 s
        return result

    monkeypatch.setattr(ModelRuntime, stage, late)
    async with running_app(model_args) as (app, client):
        batches = slow_forward(app, "sentiment", 0.0)
        response = await client.post("/v1/classify", json={"input": "x"}, headers={"X-Request-Timeout": "5"})
        timed_out = metric(app, "distilserve_timed_out_requests_total", model="sentiment")
    assert response.status_code == 504, response.text
    assert timed_out == 1
    # Late after tokenization: nothing was queued. Late after post-processing: no 200 leaves.
    assert len(batches) == (0 if stage == "prepare" else 1)


async def test_a_row_whose_deadline_passed_in_the_queue_is_dropped_at_the_batch(
    model_args: list[str], movable_clock: MovableClock
) -> None:
    async with running_app(model_args) as (app, client):
        held = hold_forward(app, "sentiment")
        blocker = asyncio.ensure_future(client.post("/v1/classify", json={"input": "blocker"}))
        await held.until_entered()
        queued = asyncio.ensure_future(
            client.post("/v1/classify", json={"input": "queued"}, headers={"X-Request-Timeout": "5"})
        )
        batcher = state_of(app).registry.models["sentiment"].batcher
        await until(lambda: batcher.queued_rows == 1, "the second request queued")
        movable_clock.advance(10.0)  # its deadline passes while the blocker's batch runs
        held.release.set()
        late, first = await queued, await blocker
    assert first.status_code == 200
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
    assert len(held.batches) == 1  # the expired row never reached the model


async def test_overload_is_refused_before_the_body_is_read_and_admitted_work_succeeds(
    model_args: list[str],
) -> None:
    async with running_app(model_args, max_queue_requests=2) as (app, client):
        held = hold_forward(app, "sentiment")
        admitted = [
            asyncio.ensure_future(client.post("/v1/classify", json={"input": f"admitted {index}"}))
            for index in range(2)
        ]
        admission = state_of(app).admission
        await until(lambda: admission.inflight == 2, "two requests admitted")
        await held.until_entered()

        read: list[int] = []

        async def never_read(index: int) -> AsyncIterator[bytes]:
            read.append(index)
            yield b"{this is not JSON, and nobody parses it"

        refused = [
            await client.post("/v1/classify", content=never_read(index), headers=JSON) for index in range(5)
        ]
        live = await client.get("/health/live")
        held.release.set()
        done = await asyncio.gather(*admitted)
        rejected = metric(app, "distilserve_rejected_requests_total", model="", reason="queue_requests")
        by_route = metric(app, "distilserve_requests_total", model="", route="/v1/classify", status="429")
    assert [response.status_code for response in refused] == [429] * 5
    assert all(response.headers["retry-after"] == "1" for response in refused)
    assert {response.json()["error"]["code"] for response in refused} == {"queue_full"}
    assert read == []  # refused before a byte of the body was read, let alone parsed
    assert live.status_code == 200
    assert [response.status_code for response in done] == [200, 200]
    assert rejected == 5 and by_route == 5


async def test_one_models_tokenization_backlog_does_not_hold_up_another_model(
    model_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    entered: list[str] = []
    real_prepare = ModelRuntime.prepare

    async with running_app(model_args, cpu_threads=2) as (app, client):
        encoder = state_of(app).registry.models["encoder"].runtime

        def prepare(self: ModelRuntime, *args: Any) -> Any:
            if self is encoder:  # the embedding model's tokenization takes as long as the test says
                entered.append("encoder")
                if not gate.wait(WAIT_S):
                    raise RuntimeError("the test never opened the gate")
            return real_prepare(self, *args)

        monkeypatch.setattr(ModelRuntime, "prepare", prepare)
        held = [
            asyncio.ensure_future(client.post("/v1/embeddings", json={"input": f"a large text {index}"}))
            for index in range(2)  # as many as the embedding model has CPU threads: its lane is full
        ]
        try:
            await until(lambda: len(entered) == 2, "both embedding requests tokenizing")
            # With one shared pool both threads are taken and this waits for the gate: WAIT_S fails it.
            classified = await asyncio.wait_for(client.post("/v1/classify", json={"input": "quick"}), WAIT_S)
            assert classified.status_code == 200 and not any(request.done() for request in held)
        finally:
            gate.set()
        embedded = await asyncio.gather(*held)
    assert [response.status_code for response in embedded] == [200, 200]
