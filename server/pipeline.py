"""The inference pipeline every task shares: check limits, tokenize, batch, finish.

A task's ``serving.py`` turns its protocol request into model items and parameters and calls
``InferencePipeline.run_texts`` (or, for QA pairs, ``run_items``). Tokenization and
post-processing run on the model's own thread pool (its CPU lane), never on the event loop, so
one model's large requests queue behind each other and never in front of another model's; rows
go to the model's dynamic batcher (``distilserve.server.batching``). Admission, deadlines and disconnects
are the HTTP side's (``distilserve.server.admission``); this module only sees the deadline they set.

Three settings trade thread hops against work on the event loop (each keeps the results,
errors, deadlines and metrics of the default path): ``tokenize_inline_chars`` tokenizes a
request of one short text on the loop (microseconds, cheaper than two thread hops);
``coalesce_tokenization`` hands every request that arrived in one turn of the loop to the lane
in one call (one hop and one executor future per group, not per request); ``tokenize_batch``
encodes a request's texts in one ``encode_batch`` call instead of one call each (with
coalescing, the whole group's texts in one call).
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
        self.tokenize_inline_chars = settings.tokenize_inline_chars
        self.coalesce_tokenization = settings.coalesce_tokenization
        self.tokenize_batch = settings.tokenize_batch
        self._lanes: dict[str, ThreadPoolExecutor] = {}
        self._coalescers: dict[str, TokenizeCoalescer] = {}

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
                prepared = await self._prepare(served, items, params, param)
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

    async def _prepare(
        self, served: ServedModel, items: Sequence[Any], params: Any, param: str
    ) -> list[Prepared]:
        """Tokenize on the loop, in a coalesced group, or alone on the lane (see the module doc)."""
        inline = self.tokenize_inline_chars
        if inline and len(items) == 1 and served.runtime.processor.item_chars(items[0]) <= inline:
            return _prepare_all(served.runtime, items, params, param, self.tokenize_batch)
        if self.coalesce_tokenization:
            coalescer = self._coalescers.get(served.name)
            if coalescer is None:
                coalescer = TokenizeCoalescer(served.runtime, self.lane(served.name), self.tokenize_batch)
                self._coalescers[served.name] = coalescer
            return await coalescer.prepare(items, params, param)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.lane(served.name), _prepare_all, served.runtime, items, params, param, self.tokenize_batch
        )

    def _check_deadline(self, context: RequestContext, stage: str) -> None:
        try:
            context.check_deadline(stage)
        except ApiError:
            self.metrics.timed_out.labels(context.model).inc()
            raise

    def close(self) -> None:
        for pool in self._lanes.values():
            pool.shutdown(wait=False, cancel_futures=True)


class TokenizeCoalescer:
    """Tokenizes the requests that arrive in one turn of the event loop in one lane call.

    The first request of a turn schedules a flush (``call_soon``); every request queued before
    it runs joins the group, and the whole group is one ``run_in_executor`` call, so under load
    a request costs no thread hop and no executor future of its own. Each request still gets
    its own results, or its own error, exactly as ``_prepare_all`` gives them.
    """

    def __init__(self, runtime: ModelRuntime, lane: ThreadPoolExecutor, use_batch: bool) -> None:
        self.runtime = runtime
        self.lane = lane
        self.use_batch = use_batch
        self._pending: list[tuple[_Request, asyncio.Future[list[Prepared]]]] = []

    async def prepare(self, items: Sequence[Any], params: Any, param: str) -> list[Prepared]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Prepared]] = loop.create_future()
        self._pending.append(((items, params, param), future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        group, self._pending = self._pending, []
        try:
            work = loop.run_in_executor(
                self.lane, _prepare_group, self.runtime, [request for request, _ in group], self.use_batch
            )
        except RuntimeError as exc:  # the lane is shut down: the server is stopping
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        work.add_done_callback(lambda done: _deliver(group, done))


_Request = tuple[Sequence[Any], Any, str]


def _prepare_group(
    runtime: ModelRuntime, requests: Sequence[_Request], use_batch: bool
) -> list[list[Prepared] | BaseException]:
    if use_batch and len(requests) > 1:
        return _prepare_group_in_one_call(runtime, requests)
    results: list[list[Prepared] | BaseException] = []
    for items, params, param in requests:
        try:
            results.append(_prepare_all(runtime, items, params, param, use_batch))
        except Exception as exc:  # each request gets its own error, as on its own
            results.append(exc)
    return results


def _prepare_group_in_one_call(
    runtime: ModelRuntime, requests: Sequence[_Request]
) -> list[list[Prepared] | BaseException]:
    """The whole group's items in one ``prepare_each`` (one ``encode_batch``) per distinct
    parameters, then cut back into requests, each with its own first error, as on its own."""
    results: list[list[Prepared] | BaseException | None] = [None] * len(requests)
    by_params: list[tuple[Any, list[int]]] = []
    for index, (_, params, _) in enumerate(requests):
        for known, members in by_params:
            if known == params:
                members.append(index)
                break
        else:
            by_params.append((params, [index]))
    for params, members in by_params:
        flat = [item for member in members for item in requests[member][0]]
        try:
            each = runtime.prepare_each(flat, params)
        except Exception as exc:  # not an input error: every request of the call shares it
            for member in members:
                results[member] = exc
            continue
        offset = 0
        for member in members:
            items, _, param = requests[member]
            try:
                results[member] = _first_error_or_all(each[offset : offset + len(items)], len(items), param)
            except InputError as exc:
                results[member] = exc
            offset += len(items)
    return [result for result in results if result is not None]


def _deliver(
    group: Sequence[tuple[_Request, asyncio.Future[list[Prepared]]]],
    done: asyncio.Future[list[list[Prepared] | BaseException]],
) -> None:
    error = asyncio.CancelledError() if done.cancelled() else done.exception()
    if error is not None:
        for _, future in group:
            if not future.done():
                future.set_exception(error)
        return
    for (_, future), result in zip(group, done.result(), strict=True):
        if future.done():  # the request left (cancelled) while its group was tokenized
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _prepare_all(
    runtime: ModelRuntime, items: Sequence[Any], params: Any, param: str, use_batch: bool = False
) -> list[Prepared]:
    if use_batch and len(items) > 1:
        results = runtime.prepare_each(items, params)
    else:
        results = []
        for item in items:
            try:
                results.append(runtime.prepare(item, params))
            except InputError as exc:
                results.append(exc)
                break  # one by one, the first bad item ends the work
    return _first_error_or_all(results, len(items), param)


def _first_error_or_all(results: Sequence[Prepared | InputError], count: int, param: str) -> list[Prepared]:
    """Raise the first item's error, named as the client wrote it (``input[3]``); else all."""
    prepared = []
    for index, result in enumerate(results):
        if isinstance(result, InputError):
            where = f"{param}[{index}]" if count > 1 else param
            result.param = f"{where}.{result.param}" if result.param and result.param != param else where
            raise result
        prepared.append(result)
    return prepared


def _finish_all(
    runtime: ModelRuntime, prepared: Sequence[Prepared], per_item: Sequence[Sequence[Any]], params: Any
) -> list[Any]:
    return [runtime.finish(item, outputs, params) for item, outputs in zip(prepared, per_item, strict=True)]
