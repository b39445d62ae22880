"""One chat turn: sentiment, retrieval, reranking, answer span, confidence, and "I don't know".

For a message the assistant asks distilserve, concurrently, for its sentiment (``/v1/classify``)
and its embedding (``/v1/embeddings``); takes the ``retrieve_k`` passages nearest to it by cosine
similarity; has the cross-encoder (``/v1/rerank``) score each of them against the message and
keeps the ``top_k`` it scores highest (without a reranker: the ``top_k`` nearest); asks the
reader (``/v1/answer``) for the best span of each, in one request; and answers with the most
trusted span (see ``confidence``), its passage and that confidence.
Below ``threshold`` it says it does not know, and still names the passage it read, so a person
can look. A message the sentiment model finds negative with probability ``human_threshold`` or
more is flagged for a human, whatever the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from examples.support_assistant.client import DistilserveClient, Sentiment, Span
from examples.support_assistant.knowledge import (
    KnowledgeBase,
    Passage,
    Retrieval,
    indexed_text,
    load_passages,
)

I_DONT_KNOW = "I don't know."
NEGATIVE_LABEL = "negative"


@dataclass(frozen=True, slots=True)
class Candidate:
    passage: Passage
    similarity: float  # cosine between the message and the passage
    span: Span  # the reader's best span in the passage
    rerank_score: float | None = None  # the cross-encoder's relevance (0-1), when one reranked

    @property
    def relevance(self) -> float:
        """How well the passage matches the message: the reranker's score, which reads message
        and passage together, or else the cosine similarity (clipped at 0)."""
        return self.rerank_score if self.rerank_score is not None else max(self.similarity, 0.0)


def confidence(candidate: Candidate, relevance_weight: float) -> float:
    """How far to trust a candidate: ``reader score x relevance ** relevance_weight``.

    The reader's score (start x end probability within its passage) is no judge of relevance:
    the reader always finds its likeliest span, and in an unrelated passage that span can still
    score 0.5. The passage's relevance is what falls for a message the documentation does not
    cover (a cosine near 0.1 against 0.3-0.7 for a covered one; a reranker's score near 0).
    How much it weighs is chosen with the threshold on the labelled questions (``calibrate``),
    as retriever-reader systems weigh the retriever's log-score against the reader's.
    """
    return candidate.span.score * float(candidate.relevance**relevance_weight)


@dataclass(frozen=True, slots=True)
class Reply:
    message: str
    answer: str  # the span, or I_DONT_KNOW
    known: bool  # False when the confidence was below the threshold
    confidence: float
    best: Candidate  # the span answered (or withheld) and its passage
    sentiment: Sentiment
    needs_human: bool
    candidates: tuple[Candidate, ...] = field(default=())  # every passage read, best ranked first

    @property
    def source(self) -> Passage:
        return self.best.passage

    @property
    def similarity(self) -> float:
        return self.best.similarity

    @property
    def rerank_score(self) -> float | None:
        return self.best.rerank_score


def best_candidate(candidates: Sequence[Candidate], relevance_weight: float) -> Candidate:
    """The candidate of highest confidence; on a tie, the earlier (better ranked) one."""
    return max(candidates, key=lambda candidate: confidence(candidate, relevance_weight))


class Assistant:
    def __init__(
        self,
        client: DistilserveClient,
        knowledge: KnowledgeBase,
        *,
        top_k: int = 5,
        retrieve_k: int = 20,
        reranker: str | None = None,
        threshold: float = 0.0,
        relevance_weight: float = 1.0,
        human_threshold: float = 0.95,
    ) -> None:
        self.client = client
        self.knowledge = knowledge
        self.top_k = top_k
        # Without a reranker only the top_k are needed; with one, it chooses them among more.
        self.retrieve_k = max(retrieve_k, top_k) if reranker else top_k
        self.reranker = reranker
        self.threshold = threshold
        self.relevance_weight = relevance_weight
        self.human_threshold = human_threshold

    @classmethod
    async def build(
        cls,
        client: DistilserveClient,
        docs_root: Path,
        *,
        max_words: int = 100,
        top_k: int = 5,
        retrieve_k: int = 20,
        reranker: str | None = None,
        threshold: float = 0.0,
        relevance_weight: float = 1.0,
        human_threshold: float = 0.95,
        index_timeout_s: float = 60.0,
        retrieval: Retrieval = "embeddings",
    ) -> Assistant:
        """Cut the documentation into passages and embed them once (16 passages a request)."""
        passages = load_passages(docs_root, max_words)
        if not passages:
            raise ValueError(f"no documentation found under {docs_root}")
        # One request at a time, so that the index is the same on every start: the int8 model
        # quantizes its activations with one scale per batch, so a text's vector moves a little
        # with whatever the server batches it with (up to 0.02 in a coordinate), and concurrent
        # requests are batched together in an order that changes from run to run. The section
        # title goes into the embedding (it says what a terse passage is about), not into what
        # the reader reads.
        vectors = [
            await client.embed(
                [indexed_text(passage) for passage in passages[start : start + 16]],
                index_timeout_s,
            )
            for start in range(0, len(passages), 16)
        ]
        knowledge = KnowledgeBase(passages, np.concatenate(vectors), retrieval)
        return cls(
            client,
            knowledge,
            top_k=top_k,
            retrieve_k=retrieve_k,
            reranker=reranker,
            threshold=threshold,
            relevance_weight=relevance_weight,
            human_threshold=human_threshold,
        )

    async def reply(self, message: str) -> Reply:
        message = message.strip()
        if not message:
            raise ValueError("the message is empty")
        sentiment, query = await asyncio.gather(self.client.classify(message), self.client.embed([message]))
        hits = self.knowledge.search(query[0], self.retrieve_k, message)
        rerank_scores: list[float | None] = [None] * len(hits)
        if self.reranker:
            scores = await self.client.rerank(message, [passage.text for passage, _ in hits], self.reranker)
            # Best first; on a tie the better retrieved one (sorted is stable).
            order = sorted(range(len(hits)), key=lambda index: -scores[index])
            hits = [hits[index] for index in order]
            rerank_scores = [scores[index] for index in order]
        hits, rerank_scores = hits[: self.top_k], rerank_scores[: self.top_k]
        spans = await self.client.answer(message, [passage.text for passage, _ in hits])
        candidates = tuple(
            Candidate(passage, similarity, span, rerank_score)
            for (passage, similarity), span, rerank_score in zip(hits, spans, rerank_scores, strict=True)
        )
        best = best_candidate(candidates, self.relevance_weight)
        trust = confidence(best, self.relevance_weight)
        known = trust >= self.threshold and bool(best.span.answer.strip())
        return Reply(
            message=message,
            answer=best.span.answer if known else I_DONT_KNOW,
            known=known,
            confidence=trust,
            best=best,
            sentiment=sentiment,
            needs_human=sentiment.probability(NEGATIVE_LABEL) >= self.human_threshold,
            candidates=candidates,
        )
