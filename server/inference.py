"""The request path every task shares: admission, deadline, disconnects, tokenize, batch, finish.

A task's ``serving.py`` turns its protocol request into model items and parameters and calls
``ServerState.run_texts`` (or, for QA pairs, ``run_items``); everything about queues, limits and
threads lives here and in ``server.batching``, once for all tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request

from models import ModelRuntime
from models.bundle import Task
from models.errors import InputError
from models.tasks import Prepared
from server.batching import (
    BatcherClosedError,
    DeadlineExceededError,
    InferenceFailedError,
    QueueFullError,
)
from server.errors import ApiError
from server.metrics import ServerMetrics
from server.registry import ModelRegistry, ServedModel
from server.settings import ServerSettings

T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout"
RETRY_AFTER_S = "1"


class ClientDisconnectedError(Exception):
    """The client closed the connection before its answer was ready."""


@dataclass(slots=True)
class RequestContext:
    """What one HTTP request carries through the serving layer."""

    deadline: float  # on time.monotonic()
    route: str
    model: str = ""
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class ItemResults:
    results: list[Any]
    tokens: int


class ServerState:
    """Everything the routes share; one per app, stored on ``app.state.distilserve``."""

    def __init__(self, settings: ServerSettings, registry: ModelRegistry, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        # Tokenization and post-processing run here, never on the event loop.
        self.cpu_pool = ThreadPoolExecutor(max_workers=settings.cpu_threads, thread_name_prefix="cpu")
        self.inflight = 0
        self.started_at = time.time()

    # Admission -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def admit(self, model: str = "") -> Iterator[None]:
        """Count a request as in flight, or refuse it with 429 when the server is full."""
        if self.inflight >= self.settings.max_queue_requests:
            self.metrics.rejected.labels(model, "queue_requests").inc()
            raise ApiError(
                429,
                f"server is at capacity ({self.inflight} requests in flight); retry later",
                code="queue_full",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        self.inflight += 1
        self.metrics.inflight_requests.set(self.inflight)
        try:
            yield
        finally:
            self.inflight -= 1
            self.metrics.inflight_requests.set(self.inflight)

    def deadline_for(self, request: Request) -> float:
        """Now plus the request's timeout: the X-Request-Timeout header (seconds) or the default."""
        timeout = self.settings.request_timeout_s
        header = request.headers.get(TIMEOUT_HEADER)
        if header is not None:
            try:
                timeout = float(header)
            except ValueError:
                timeout = math.nan
            if not math.isfinite(timeout) or timeout <= 0:
                raise ApiError(
                    422,
                    f"X-Request-Timeout must be a positive number of seconds, got {header!r}",
                    code="invalid_timeout",
                    param="X-Request-Timeout",
                )
            timeout = min(timeout, self.settings.max_request_timeout_s)
        return time.monotonic() + timeout

    # Limits ----------------------------------------------------------------------------------

    def check_items(self, texts: Sequence[str], param: str) -> None:
        """Items per request and characters per item, before any tokenization is spent on them."""
        limit = self.settings.max_items_per_request
        if len(texts) > limit:
            raise ApiError(
                413,
                f"{len(texts)} items in one request; the limit is {limit}",
                code="too_many_items",
                param=param,
            )
        if not texts:
            raise ApiError(422, f"{param} must not be empty", code="invalid_input", param=param)
        max_chars = self.settings.max_chars_per_item
        for index, text in enumerate(texts):
            if len(text) > max_chars:
                where = f"{param}[{index}]" if len(texts) > 1 else param
                raise ApiError(
                    413,
                    f"{where} has {len(text)} characters; the limit is {max_chars}",
                    code="item_too_large",
                    param=where,
                )

    # Inference -------------------------------------------------------------------------------

    async def run_items(
        self,
        served: ServedModel,
        items: Sequence[Any],
        params: Any,
        context: RequestContext,
        *,
        param: str,
    ) -> ItemResults:
        """Tokenize off the loop, queue every row, then post-process: one result per item, in order."""
        loop = asyncio.get_running_loop()
        runtime = served.runtime
        context.model = served.name
        with served.batcher.incoming():
            started = time.perf_counter()
            try:
                prepared = await loop.run_in_executor(
                    self.cpu_pool, _prepare_all, runtime, items, params, param
                )
            finally:
                self.metrics.tokenization.labels(served.name).observe(time.perf_counter() - started)
        rows = [row for item in prepared for row in item.rows]
        context.tokens = sum(item.num_tokens for item in prepared)
        try:
            outputs = await served.batcher.run_rows(rows, context.deadline)
        except QueueFullError as exc:
            raise ApiError(429, str(exc), code="queue_full", headers={"Retry-After": RETRY_AFTER_S}) from exc
        except DeadlineExceededError as exc:
            self.metrics.timed_out.labels(served.name).inc()
            raise ApiError(504, f"request deadline exceeded: {exc}", code="deadline_exceeded") from exc
        except BatcherClosedError as exc:
            raise ApiError(503, str(exc), code="shutting_down") from exc
        except InferenceFailedError as exc:
            raise ApiError(500, str(exc), code="inference_failed") from exc
        per_item: list[list[Any]] = []
        offset = 0
        for item in prepared:
            per_item.append(outputs[offset : offset + len(item.rows)])
            offset += len(item.rows)
        if len(items) == 1:
            # One small item: post-processing is microseconds, cheaper than a thread hop.
            results = [runtime.finish(prepared[0], per_item[0], params)]
        else:
            results = await loop.run_in_executor(
                self.cpu_pool, _finish_all, runtime, prepared, per_item, params
            )
        return ItemResults(results=results, tokens=context.tokens)

    async def run_texts(
        self,
        model: str | None,
        task: Task,
        texts: list[str],
        params: Any,
        context: RequestContext,
        *,
        param: str,
    ) -> tuple[ServedModel, ItemResults]:
        """The text tasks' whole path: limits, the model for ``task``, then ``run_items``."""
        self.check_items(texts, param)
        served = self.registry.resolve(model, task)
        return served, await self.run_items(served, texts, params, context, param=param)

    def close(self) -> None:
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)


def _prepare_all(runtime: ModelRuntime, items: Sequence[Any], params: Any, param: str) -> list[Prepared]:
    prepared = []
    for index, item in enumerate(items):
        try:
            prepared.append(runtime.prepare(item, params))
        except InputError as exc:
            # Name the offending item the way the client wrote it: input[3].
            where = f"{param}[{index}]" if len(items) > 1 else param
            exc.param = f"{where}.{exc.param}" if exc.param and exc.param != param else where
            raise
    return prepared


def _finish_all(
    runtime: ModelRuntime, prepared: Sequence[Prepared], per_item: Sequence[Sequence[Any]], params: Any
) -> list[Any]:
    return [runtime.finish(item, outputs, params) for item, outputs in zip(prepared, per_item, strict=True)]


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away. The body has been read, so the next message is the end."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def serve(request: Request, route: str, handler: Callable[[RequestContext], Awaitable[T]]) -> T:
    """Run one request's handler under admission, its deadline, and a watch on its connection.

    If the client disconnects first, the handler is cancelled; its queued rows are then dropped
    by the batcher before they are computed.
    """
    state: ServerState = request.app.state.distilserve
    context = RequestContext(deadline=state.deadline_for(request), route=route)
    request.state.context = context
    with state.admit():
        work = asyncio.ensure_future(handler(context))
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            watcher.cancel()
            raise
        if work.done():
            watcher.cancel()
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        state.metrics.cancelled.labels(context.model).inc()
        raise ClientDisconnectedError(route)
