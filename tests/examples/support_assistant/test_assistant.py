"""One chat turn on a fake distilserve (httpx's mock transport): which passages are retrieved,
reranked and read, and how the confidence and the threshold use the reranker's score."""

from __future__ import annotations

import json

import httpx
import numpy as np

from examples.support_assistant.assistant import I_DONT_KNOW, Assistant
from examples.support_assistant.client import DistilserveClient
from examples.support_assistant.knowledge import KnowledgeBase, Passage

# Nearest to the message's embedding ([1, 0]) first: near, near-ish, middle, far.
PASSAGES = [Passage("README.md", "", text) for text in ("near", "near-ish", "middle", "far")]
VECTORS = np.asarray([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]], dtype=np.float32)
# The cross-encoder disagrees with the embeddings: the far passage is the one that answers.
RERANK_SCORES = {"near": 0.1, "near-ish": 0.05, "middle": 0.6, "far": 0.95}


class FakeDistilserve:
    """Answers the four routes the assistant calls and records every request body by path."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, object]]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.setdefault(request.url.path, []).append(body)
        if request.url.path == "/v1/classify":
            labels = [{"label": "positive", "score": 0.8}, {"label": "negative", "score": 0.2}]
            return httpx.Response(200, json={"data": [{"label": "positive", "score": 0.8, "labels": labels}]})
        if request.url.path == "/v1/embeddings":
            return httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0, 0.0]}]})
        if request.url.path == "/v1/rerank":
            scored = [
                {"index": index, "relevance_score": RERANK_SCORES[text]}
                for index, text in enumerate(body["documents"])
            ]
            return httpx.Response(200, json={"results": sorted(scored, key=lambda r: -r["relevance_score"])})
        if request.url.path == "/v1/answer":
            # The span is the whole context, at the same reader score for every passage.
            spans = [
                {"answer": item["context"], "score": 0.5, "start": 0, "end": len(item["context"])}
                for item in body["inputs"]
            ]
            return httpx.Response(200, json=spans)
        return httpx.Response(404, json={"error": {"message": "no such route"}})


def assistant_on(fake: FakeDistilserve, **options: object) -> Assistant:
    client = DistilserveClient("http://distilserve.test", timeout_s=2.0, transport=httpx.MockTransport(fake))
    return Assistant(client, KnowledgeBase(PASSAGES, VECTORS), top_k=2, **options)  # type: ignore[arg-type]


def contexts_read(fake: FakeDistilserve) -> list[str]:
    (request,) = fake.bodies["/v1/answer"]
    inputs = request["inputs"]
    assert isinstance(inputs, list)
    return [item["context"] for item in inputs]


async def test_the_reranker_chooses_which_retrieved_passages_are_read() -> None:
    fake = FakeDistilserve()
    reply = await assistant_on(fake, retrieve_k=4, reranker="squad-reranker", relevance_weight=1.0).reply("q")
    # All four retrieved, in retrieval order, go to the reranker; its best two are read, best first.
    assert fake.bodies["/v1/rerank"] == [
        {"model": "squad-reranker", "query": "q", "documents": ["near", "near-ish", "middle", "far"]}
    ]
    assert contexts_read(fake) == ["far", "middle"]
    assert [candidate.rerank_score for candidate in reply.candidates] == [0.95, 0.6]
    assert reply.answer == "far" and reply.known
    assert reply.confidence == 0.5 * 0.95
    assert reply.similarity == 0.0  # still reported: the cosine of the passage answered


async def test_without_a_reranker_the_nearest_passages_are_read() -> None:
    fake = FakeDistilserve()
    reply = await assistant_on(fake, retrieve_k=4, reranker=None, relevance_weight=1.0).reply("q")
    assert "/v1/rerank" not in fake.bodies
    assert contexts_read(fake) == ["near", "near-ish"]
    assert reply.answer == "near" and reply.rerank_score is None
    assert reply.confidence == 0.5 * 1.0


async def test_a_low_rerank_score_withholds_the_answer() -> None:
    fake = FakeDistilserve()
    assistant = assistant_on(
        fake, retrieve_k=2, reranker="squad-reranker", relevance_weight=2.0, threshold=0.1
    )
    reply = await assistant.reply("q")  # only "near" and "near-ish" retrieved: both score low
    assert reply.answer == I_DONT_KNOW and not reply.known
    assert reply.best.passage.text == "near"  # the passage read is still named
    assert reply.confidence == 0.5 * 0.1**2
