"""The inference pipeline every task shares: check limits, tokenize, batch, finish.

A task's ``serving.py`` turns its protocol request into model items and parameters and calls
``InferencePipeline.run_texts`` (or, for QA pairs, ``run_items``). Tokenization and
post-processing run on the model's own thread pool (its CPU lane), never on the event loop, so
one model's large requests queue behind each other and never in front of another model's; rows
go to the model's dynamic batcher (``distilserve.server.batching``). Admission, deadlines and disconnects
are the HTTP side's (``distilserve.server.admission``); this module only sees the deadline they set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from distilserve.models import ModelRuntime
from distilserve.models.bundle import Task
from distilserve.models.errors import InputError
from distilserve.models.tasks import Prepared
from distilserve.server.admission import RETRY_AFTER_S, RequestContext
from distilserve.server.batching import (
    BatcherClosedError,
    DeadlineExceededError,
    InferenceFailedError,
    QueueFullError,
)
from distilserve.server.errors import ApiError
from distilserve.server.metrics import ServerMetrics
from distilserve.server.registry import ModelRegistry, ServedModel
from distilserve.server.settings import ServerSettings


@dataclass(frozen=True, slots=True)
class ItemResults:
    results: list[Any]
    tokens: int


class InferencePipeline:
    """One per app: the limits per request, the CPU pool, and the way to every model's batcher."""

    def __init__(self, settings: ServerSettings, registry: ModelRegistry, metrics: ServerMetrics) -> None:
        self.max_items_per_request = settings.max_items_per_request
        self.max_chars_per_item = settings.max_chars_per_item
        self.registry = registry
        self.metrics = metrics
        self.cpu_threads = settings.cpu_threads
        self._lanes: dict[str, ThreadPoolExecutor] = {}

    def lane(self, model: str) -> ThreadPoolExecutor:
        """The threads that tokenize and post-process ``model``'s requests (made on first use)."""
        pool = self._lanes.get(model)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=self.cpu_threads, thread_name_prefix=f"cpu-{model}")
            self._lanes[model] = pool
        return pool

    def check_items(self, texts: Sequence[str], param: str) -> None:
        """Items per request and characters per item, before any tokenization is spent on them."""
        limit = self.max_items_per_request
        if len(texts) > limit:
            raise ApiError(
                413,
                f"{len(texts)} items in one request; the limit is {limit}",
                code="too_many_items",
                param=param,
            )
        if not texts:
            raise ApiError(422, f"{param} must not be empty", code="invalid_input", param=param)
        max_chars = self.max_chars_per_item
        for index, text in enumerate(texts):
            if len(text) > max_chars:
                where = f"{param}[{index}]" if len(texts) > 1 else param
                raise ApiError(
                    413,
                    f"{where} has {len(text)} characters; the limit is {max_chars}",
                    code="item_too_large",
                    param=where,
                )

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
        lane = self.lane(served.name)
        context.model = served.name
        # The deadline counts from arrival and is checked at each hand-off: reading and parsing the
        # body, the CPU pool's queue and post-processing can all outlast it, not only the batch.
        self._check_deadline(context, "before tokenization")
        with served.batcher.incoming():
            started = time.perf_counter()
            try:
                prepared = await loop.run_in_executor(lane, _prepare_all, runtime, items, params, param)
            finally:
                self.metrics.tokenization.labels(served.name).observe(time.perf_counter() - started)
        rows = [row for item in prepared for row in item.rows]
        context.tokens = sum(item.num_tokens for item in prepared)
        self._check_deadline(context, "before its rows were queued")
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
            results = await loop.run_in_executor(lane, _finish_all, runtime, prepared, per_item, params)
        self._check_deadline(context, "during post-processing")
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

    def _check_deadline(self, context: RequestContext, stage: str) -> None:
        try:
            context.check_deadline(stage)
        except ApiError:
            self.metrics.timed_out.labels(context.model).inc()
            raise

    def close(self) -> None:
        for pool in self._lanes.values():
            pool.shutdown(wait=False, cancel_futures=True)


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
