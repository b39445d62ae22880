"""An async client for the four distilserve routes the assistant uses, with timeouts and retries.

A 429 (queue full) or 503 (over capacity, draining) is distilserve saying "not now": the client
waits what ``Retry-After`` asks (capped, so a wrong header cannot stall a chat turn) and tries
again. A connection that fails before any answer is retried with exponential back-off. Anything
else (a 4xx about the request, a 504 past its deadline) is final and raised at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({429, 503})
Sleep = Callable[[float], Awaitable[None]]


class DistilserveError(RuntimeError):
    """distilserve answered with an error (after any retries), or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_s: float = 0.1  # first wait after a connection error; doubles each time
    max_wait_s: float = 5.0  # the longest wait, whatever Retry-After says


@dataclass(frozen=True, slots=True)
class Sentiment:
    label: str  # the best label
    score: float  # its probability
    probabilities: dict[str, float]  # every label's

    def probability(self, label: str) -> float:
        return self.probabilities.get(label, 0.0)


@dataclass(frozen=True, slots=True)
class Span:
    answer: str
    score: float
    start: int
    end: int


def retry_after_s(response: httpx.Response, default_s: float) -> float:
    """``Retry-After`` in seconds (distilserve sends delta-seconds); ``default_s`` without one."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else default_s
    except ValueError:  # an HTTP date: not what distilserve sends; fall back to back-off
        return default_s


class DistilserveClient:
    """``/v1/classify``, ``/v1/embeddings`` and ``/v1/answer`` over one pooled connection set."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        api_key: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            headers=headers,
            transport=transport,
        )
        self.retry = retry
        self.sleep = sleep
        self.timeout_s = timeout_s

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> DistilserveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def post(self, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        """POST JSON and return the parsed answer, retrying what distilserve asks to retry.

        ``timeout_s`` overrides the client's deadline for this call (indexing, not chatting)."""
        deadline_s = self.timeout_s if timeout_s is None else timeout_s
        backoff = self.retry.backoff_s
        for attempt in range(self.retry.max_retries + 1):
            last = attempt == self.retry.max_retries
            try:
                # The server's own deadline matches ours, so it drops work we no longer wait for.
                response = await self.http.post(
                    path, json=body, headers={"X-Request-Timeout": str(deadline_s)}, timeout=deadline_s
                )
            except httpx.TransportError as exc:
                if last or isinstance(exc, httpx.TimeoutException):
                    raise DistilserveError(f"{path}: {type(exc).__name__}: {exc}") from exc
                wait = min(backoff, self.retry.max_wait_s)
                logger.warning("%s: %s; retrying in %.2f s", path, type(exc).__name__, wait)
            else:
                if response.status_code < 400:
                    return response.json()
                if response.status_code not in RETRIED_STATUSES or last:
                    raise DistilserveError(
                        f"{path}: HTTP {response.status_code}: {_error_message(response)}",
                        response.status_code,
                    )
                wait = min(retry_after_s(response, backoff), self.retry.max_wait_s)
                logger.warning("%s: HTTP %d; retrying in %.2f s", path, response.status_code, wait)
            await self.sleep(wait)
            backoff *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def classify(self, text: str) -> Sentiment:
        body = await self.post("/v1/classify", {"input": text, "top_k": None})
        best = body["data"][0]
        probabilities = {entry["label"]: float(entry["score"]) for entry in best["labels"]}
        return Sentiment(best["label"], float(best["score"]), probabilities)

    async def embed(self, texts: Sequence[str], timeout_s: float | None = None) -> npt.NDArray[np.float32]:
        body = await self.post("/v1/embeddings", {"input": list(texts)}, timeout_s)
        rows = sorted(body["data"], key=lambda item: item["index"])
        return np.asarray([row["embedding"] for row in rows], dtype=np.float32)

    async def rerank(self, query: str, documents: Sequence[str], model: str) -> list[float]:
        """The cross-encoder's relevance (0-1) of each document to ``query``, in the order given
        (one ``/v1/rerank`` request; the server answers best first)."""
        body = await self.post("/v1/rerank", {"model": model, "query": query, "documents": list(documents)})
        scores = {int(result["index"]): float(result["relevance_score"]) for result in body["results"]}
        if sorted(scores) != list(range(len(documents))):
            raise DistilserveError(f"/v1/rerank scored documents {sorted(scores)} of {len(documents)}")
        return [scores[index] for index in range(len(documents))]

    async def answer(self, question: str, contexts: Sequence[str]) -> list[Span]:
        """The best span of each context, in the order given (one request for all of them)."""
        inputs = [{"question": question, "context": context} for context in contexts]
        body = await self.post("/v1/answer", {"inputs": inputs, "parameters": {"top_k": 1}})
        # A list of inputs answers a list; with top_k 1 each entry is one answer (or a list of one).
        answers = [entry[0] if isinstance(entry, list) else entry for entry in body]
        return [Span(a["answer"], float(a["score"]), int(a["start"]), int(a["end"])) for a in answers]


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
