"""Rerank over HTTP: TEI's ``/rerank`` and Jina/Cohere's ``/v1/rerank``, ``/v2/rerank``.

A tiny int8 cross-encoder is served beside the other tasks' tiny models; its scores are those
of ``ModelRuntime.predict`` on the same pairs, and its requests meet the same limits, errors,
metrics, deadlines and batches as the other tasks'.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI

from distilserve.models import load_model
from distilserve.models.tasks import RerankPair, RerankParams
from distilserve.server import clock
from tests.server.conftest import hold_forward, metric, running_app, state_of, until
from tests.tiny_models import Arch

RerankBundles = dict[tuple[Arch, Literal["int8", "none"]], Path]
QUERY = "what about the film?"
TEXTS = [
    "The film was wonderful from start to finish.",
    "My order arrived late and the battery was awful.",
    "The soundtrack was brilliant, the plot was slow.",
    "Our hotel was charming at the airport in paris.",
]
LONG_TEXT = " ".join(f"the plot was slow {index}" for index in range(60))


@pytest.fixture(scope="module")
def reranker_bundle(tiny_rerank_bundles: RerankBundles) -> Path:
    return tiny_rerank_bundles[("bert", "int8")]


@pytest.fixture
async def rerank_client(
    model_args: list[str], reranker_bundle: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app([*model_args, f"reranker={reranker_bundle}"]) as pair:
        yield pair


def expected_scores(bundle: Path, texts: list[str], **params: Any) -> list[float]:
    model = load_model(bundle)
    return [float(s) for s in model.predict([RerankPair(QUERY, t) for t in texts], RerankParams(**params))]


async def test_tei_rerank_answers_every_text_best_first(
    rerank_client: tuple[FastAPI, httpx.AsyncClient], reranker_bundle: Path
) -> None:
    app, client = rerank_client
    response = await client.post("/rerank", json={"query": QUERY, "texts": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = expected_scores(reranker_bundle, TEXTS)
    assert sorted(item["index"] for item in body) == list(range(len(TEXTS)))
    assert [item["score"] for item in body] == sorted(expected, reverse=True)
    for item in body:
        assert set(item) == {"index", "score"}
        assert item["score"] == pytest.approx(expected[item["index"]], abs=1e-6)
    assert metric(app, "distilserve_requests_total", model="reranker", route="/rerank", status="200") == 1

    with_text = await client.post(
        "/rerank", json={"query": QUERY, "texts": TEXTS, "return_text": True, "raw_scores": True}
    )
    assert with_text.status_code == 200, with_text.text
    logits = expected_scores(reranker_bundle, TEXTS, raw_scores=True)
    for item in with_text.json():
        assert item["text"] == TEXTS[item["index"]]
        assert item["score"] == pytest.approx(logits[item["index"]], abs=1e-5)


async def test_tei_truncation_is_off_unless_asked_and_cuts_the_text_on_the_side_asked(
    rerank_client: tuple[FastAPI, httpx.AsyncClient], reranker_bundle: Path
) -> None:
    _, client = rerank_client
    texts = [TEXTS[0], LONG_TEXT]
    refused = await client.post("/rerank", json={"query": QUERY, "texts": texts})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["param"] == "texts[1]"
    for direction in ("right", "Left", "left"):
        body = {"query": QUERY, "texts": texts, "truncate": True, "truncation_direction": direction}
        response = await client.post("/rerank", json=body)
        assert response.status_code == 200, response.text
        side = direction.lower()
        expected = expected_scores(reranker_bundle, texts, truncation_direction=side)
        by_index = {item["index"]: item["score"] for item in response.json()}
        assert by_index[1] == pytest.approx(expected[1], abs=1e-6)
    bad = await client.post("/rerank", json={"query": QUERY, "texts": texts, "truncation_direction": "up"})
    assert bad.status_code == 422


async def test_too_many_texts_and_bad_input_get_the_shared_errors(
    rerank_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = rerank_client
    limit = 256  # max_items_per_request's default
    too_many = await client.post("/rerank", json={"query": QUERY, "texts": ["a text"] * (limit + 1)})
    assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "too_many_items"
    assert too_many.json()["error"]["param"] == "texts"
    cohere = await client.post("/v1/rerank", json={"query": QUERY, "documents": ["a"] * (limit + 1)})
    assert cohere.status_code == 413 and cohere.json()["error"]["param"] == "documents"
    for body in (
        {"query": "  ", "texts": TEXTS},
        {"query": QUERY, "texts": []},
        {"query": QUERY, "texts": "not a list"},
        {"query": QUERY, "texts": [TEXTS[0], ""]},
        {"query": QUERY, "texts": TEXTS, "truncate": "yes"},
    ):
        response = await client.post("/rerank", json=body)
        assert response.status_code == 422, (body, response.text)
    for top_n in (-1, 100_001, 1.5, "3"):
        response = await client.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS, "top_n": top_n})
        assert response.status_code == 422, (top_n, response.text)
    wrong_task = await client.post("/rerank", json={"query": QUERY, "texts": TEXTS, "model": "sentiment"})
    assert wrong_task.status_code == 400 and wrong_task.json()["error"]["code"] == "wrong_task"
    unknown = await client.post("/v2/rerank", json={"query": QUERY, "documents": TEXTS, "model": "nope"})
    assert unknown.status_code == 404
    long_query = await client.post("/rerank", json={"query": LONG_TEXT, "texts": TEXTS, "truncate": True})
    assert long_query.status_code == 422 and "query" in long_query.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
async def test_cohere_shape_returns_the_top_n_with_documents(
    rerank_client: tuple[FastAPI, httpx.AsyncClient], reranker_bundle: Path, path: str
) -> None:
    _, client = rerank_client
    expected = expected_scores(reranker_bundle, TEXTS)
    best = sorted(range(len(TEXTS)), key=lambda index: -expected[index])
    response = await client.post(
        path, json={"model": "reranker", "query": QUERY, "documents": TEXTS, "top_n": 2}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "reranker" and body["id"].startswith("rerank-")
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(TEXTS) * 3
    assert [result["index"] for result in body["results"]] == best[:2]
    for result in body["results"]:
        assert result["document"] == {"text": TEXTS[result["index"]]}
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-6)

    # top_n 0 (vLLM's default) or absent: every document; objects as documents; no documents back.
    documents = [{"text": text} for text in TEXTS]
    for top_n in (0, None, 10):
        request = {"query": QUERY, "documents": documents, "top_n": top_n, "return_documents": False}
        response = await client.post(path, json=request)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [result["index"] for result in results] == best
        assert all(set(result) == {"index", "relevance_score"} for result in results)
    # Cohere SDKs send options of their own; they are ignored, a long document is cut.
    extra = {"query": QUERY, "documents": [LONG_TEXT], "max_tokens_per_doc": 4096, "rank_fields": None}
    response = await client.post(path, json=extra)
    assert response.status_code == 200, response.text


async def test_concurrent_requests_share_batches(rerank_client: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = rerank_client
    held = hold_forward(app, "reranker")
    first = asyncio.ensure_future(client.post("/rerank", json={"query": QUERY, "texts": TEXTS[:1]}))
    await held.until_entered()
    # While the first batch holds the model, two requests queue: 4 + 3 pairs.
    others = [
        asyncio.ensure_future(client.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS})),
        asyncio.ensure_future(client.post("/rerank", json={"query": QUERY, "texts": TEXTS[1:]})),
    ]
    batcher = state_of(app).registry.models["reranker"].batcher
    await until(lambda: batcher.queued_rows == 2 * len(TEXTS) - 1, "both requests queued")
    held.release.set()
    responses = await asyncio.gather(first, *others)
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert held.batches[0] and len(held.batches[0]) == 1
    assert sum(len(batch) for batch in held.batches[1:]) == 2 * len(TEXTS) - 1
    # One batch held rows of both requests (more than either one has).
    assert max(len(batch) for batch in held.batches[1:]) > len(TEXTS)


class MovableClock:
    """The server's deadline clock, moved forward by the test instead of waited for."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def test_a_deadline_that_passes_in_the_queue_is_a_504(
    rerank_client: tuple[FastAPI, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = rerank_client
    moved = MovableClock()
    monkeypatch.setattr(clock, "now", moved)
    held = hold_forward(app, "reranker")
    blocker = asyncio.ensure_future(client.post("/rerank", json={"query": QUERY, "texts": TEXTS[:1]}))
    await held.until_entered()
    late = asyncio.ensure_future(
        client.post(
            "/v2/rerank", json={"query": QUERY, "documents": TEXTS}, headers={"X-Request-Timeout": "5"}
        )
    )
    batcher = state_of(app).registry.models["reranker"].batcher
    await until(lambda: batcher.queued_rows == len(TEXTS), "the late request queued")
    moved.offset += 10.0
    held.release.set()
    assert (await blocker).status_code == 200
    response = await late
    assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"
    assert metric(app, "distilserve_timed_out_requests_total", model="reranker") == 1
