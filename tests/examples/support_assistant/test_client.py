"""The assistant's distilserve client: retries that honour Retry-After, on a fake transport and
a fake sleep (no server, no waiting)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from examples.support_assistant.client import DistilserveClient, DistilserveError, RetryPolicy


class Script:
    """Answers requests from a list of responses (or exceptions), recording what was asked."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client_for(script: Script, waits: list[float], retries: int = 3) -> DistilserveClient:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return DistilserveClient(
        "http://distilserve.test",
        timeout_s=2.0,
        retry=RetryPolicy(max_retries=retries, backoff_s=0.1, max_wait_s=5.0),
        sleep=sleep,
        transport=httpx.MockTransport(script),
    )


CLASSIFIED = {"data": [{"label": "negative", "score": 0.9, "labels": [
    {"label": "negative", "score": 0.9}, {"label": "positive", "score": 0.1}]}]}  # fmt: skip


async def test_a_429_is_retried_after_the_seconds_retry_after_asks() -> None:
    busy = httpx.Response(429, headers={"Retry-After": "2"}, json={"error": {"message": "queue full"}})
    script = Script(
        busy, httpx.Response(503, headers={"Retry-After": "1"}), httpx.Response(200, json=CLASSIFIED)
    )
    waits: list[float] = []
    async with client_for(script, waits) as client:
        sentiment = await client.classify("this is awful")
    assert waits == [2.0, 1.0]
    assert (sentiment.label, sentiment.probability("negative"), sentiment.probability("positive")) == (
        "negative",
        0.9,
        0.1,
    )
    sent = json.loads(script.requests[0].content)
    assert sent == {"input": "this is awful", "top_k": None}
    assert script.requests[0].headers["X-Request-Timeout"] == "2.0"


async def test_retry_after_is_capped_and_a_missing_one_backs_off() -> None:
    script = Script(
        httpx.Response(429, headers={"Retry-After": "3600"}),
        httpx.Response(429),
        httpx.Response(429, headers={"Retry-After": "soon"}),
        httpx.Response(200, json=CLASSIFIED),
    )
    waits: list[float] = []
    async with client_for(script, waits) as client:
        await client.classify("x")
    assert waits == [5.0, 0.2, 0.4]  # capped; then the doubling back-off (0.1 was the first)


async def test_the_last_refusal_is_raised_with_distilserves_message() -> None:
    full = httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "queue full"}})
    waits: list[float] = []
    async with client_for(Script(full, full, full), waits, retries=2) as client:
        with pytest.raises(DistilserveError, match="HTTP 429: queue full") as raised:
            await client.classify("x")
    assert raised.value.status == 429 and waits == [0.0, 0.0]


async def test_a_request_error_is_not_retried() -> None:
    bad = httpx.Response(422, json={"error": {"message": "input: input text is empty"}})
    waits: list[float] = []
    script = Script(bad)
    async with client_for(script, waits) as client:
        with pytest.raises(DistilserveError, match="422: input: input text is empty"):
            await client.classify(" ")
    assert waits == [] and len(script.requests) == 1


async def test_a_refused_connection_is_retried_but_a_timeout_is_not() -> None:
    vectors = {"data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}]}
    waits: list[float] = []
    async with client_for(
        Script(httpx.ConnectError("refused"), httpx.Response(200, json=vectors)), waits
    ) as client:
        embedded = await client.embed(["a", "b"])
    np.testing.assert_array_equal(embedded, [[1.0, 0.0], [0.0, 1.0]])  # in input order, not answer order
    assert waits == [0.1]
    async with client_for(Script(httpx.ReadTimeout("slow")), waits) as client:
        with pytest.raises(DistilserveError, match="ReadTimeout"):
            await client.embed(["a"])


async def test_answers_come_back_one_per_context_in_order() -> None:
    answers = [
        {"answer": "Berlin", "score": 0.6, "start": 34, "end": 40},
        [{"answer": "x", "score": 0.1, "start": 0, "end": 1}],
    ]
    script = Script(httpx.Response(200, json=answers))
    async with client_for(script, []) as client:
        spans = await client.answer("Where?", ["I live in Berlin.", "x"])
    assert [(span.answer, span.score) for span in spans] == [("Berlin", 0.6), ("x", 0.1)]
    sent = json.loads(script.requests[0].content)
    assert sent == {
        "inputs": [
            {"question": "Where?", "context": "I live in Berlin."},
            {"question": "Where?", "context": "x"},
        ],
        "parameters": {"top_k": 1},
    }


async def test_rerank_scores_come_back_in_document_order() -> None:
    best_first = {
        "id": "rerank-1",
        "model": "squad-reranker",
        "results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.2}],
    }
    script = Script(httpx.Response(200, json=best_first))
    async with client_for(script, []) as client:
        scores = await client.rerank("Which port?", ["about memory", "port 8080"], "squad-reranker")
    assert scores == [0.2, 0.9]
    sent = json.loads(script.requests[0].content)
    assert sent == {
        "model": "squad-reranker",
        "query": "Which port?",
        "documents": ["about memory", "port 8080"],
    }
    # A document the server left unscored is an error, not a silent 0.
    partial = {"results": [{"index": 1, "relevance_score": 0.9}]}
    async with client_for(Script(httpx.Response(200, json=partial)), []) as client:
        with pytest.raises(DistilserveError, match="scored documents"):
            await client.rerank("Which port?", ["about memory", "port 8080"], "squad-reranker")
