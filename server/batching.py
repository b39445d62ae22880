"""The dynamic batcher: one queue and one scheduler per model, shared by every task.

Requests arrive as *jobs*: the model rows of one request (one per text, several for a long QA
context). Rows wait in a queue; the scheduler cuts the queue, sorted by length, into the
cheapest batches (``distilserve.models.batching.plan_groups``: padded tokens plus a fixed cost per batch,
under ``max_batch_size`` rows and ``max_batch_tokens`` padded tokens; the fixed cost is the
``batch_overhead_tokens`` constant, or this model's calibrated cost, see ``use_cost``) and
runs the one holding the oldest row, so nothing starves and padding stays small. A packed graph
(``distilserve.models.packing``) has no padding to save: its batches are the oldest rows, in
arrival order. A job
completes when all of its rows have been computed, whatever batches they landed in.

The batch runs on a dedicated inference thread, one per model: ONNX Runtime parallelises inside
a batch with its own intra-op threads, so running two batches of one model at once would only
make them fight over the cores. While a batch runs, new requests gather in the queue, which is
what makes batches grow under load without any waiting. The scheduler waits (up to
``max_wait_ms``) only when a batch would be under-filled *and* more requests are already being
tokenized for this model (with a calibrated cost, at most one fixed cost of a run); an idle
server answers a lone request at once.

Rows of jobs whose deadline passed, or whose client left, are dropped before they are batched.

Memory: a model's engine keeps what its largest batches needed (ONNX Runtime's arena) until it
is asked to give it back (``release_memory``). The batcher asks when the model has had no batch
for ``memory_release_idle_s``, and after each large batch while the process is above its release
mark (half its memory budget): a release is cheap, but the next large batch faults its memory in
again, which cost 22% of large-batch throughput when done after every batch (issue 25).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from distilserve.models.batch_cost import BatchCost
from distilserve.models.batching import SERVER_BATCH_LIMITS, BatchLimits, EncodedRow, plan_groups
from distilserve.models.memory import BatchMemoryEstimate, resident_bytes
from distilserve.models.packing import packed_tokens
from distilserve.server import clock
from distilserve.server.observer import BatchReport, Observer, RequestTrace

logger = logging.getLogger(__name__)

ForwardFn = Callable[[Sequence[EncodedRow]], Sequence[Any]]
ReleaseFn = Callable[[], None]

# A batch estimated below this (``BatchMemoryEstimate``) cannot have grown the engine's memory
# much: above the release mark, releasing after it would cost a run's worth of set-up for little.
RELEASE_AFTER_BATCH_BYTES = 16 * 2**20


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """The batch limits (shared with offline scoring), and what only a live queue has."""

    limits: BatchLimits = SERVER_BATCH_LIMITS
    max_wait_ms: float = 2.0
    max_queue_tokens: int = 262144
    # Seconds with no batch after which a model gives back its batch memory (None: never).
    memory_release_idle_s: float | None = 1.0


DEFAULT_POLICY = BatchPolicy()


class QueueFullError(Exception):
    """The model's queue holds its token budget; the client should retry later."""

    def __init__(self, model: str, queued_tokens: int, limit: int) -> None:
        self.model = model
        super().__init__(
            f"model {model!r} is at capacity ({queued_tokens} tokens queued, limit {limit}); retry later"
        )


class RowTooLargeForMemoryError(Exception):
    """A row whose batch of one would not fit in the model's share of the memory budget."""

    def __init__(self, model: str, width: int, row_bytes: int, limit_bytes: int) -> None:
        self.model = model
        super().__init__(
            f"an input of {width} tokens needs about {row_bytes // 2**20} MiB on model {model!r}, more "
            f"than its share of the server's memory budget ({limit_bytes // 2**20} MiB); send a shorter "
            "input, or raise --memory-budget-mb"
        )


class DeadlineExceededError(Exception):
    """The request's deadline passed before its result was ready."""


class BatcherClosedError(Exception):
    """The batcher is shutting down and takes no new work."""


class InferenceFailedError(Exception):
    """ONNX Runtime raised while running a batch that held this request's rows."""


class Job:
    """The rows of one request for one model; ``future`` resolves to their outputs, in order.

    Its times are ``time.perf_counter()`` seconds; ``trace`` is its request's (none for warm-up).
    """

    __slots__ = (
        "cancelled",
        "deadline",
        "enqueued_at",
        "future",
        "outputs",
        "remaining",
        "started",
        "started_at",
        "trace",
    )

    def __init__(
        self,
        num_rows: int,
        deadline: float,
        future: asyncio.Future[list[Any]],
        trace: RequestTrace | None = None,
    ) -> None:
        self.outputs: list[Any] = [None] * num_rows
        self.remaining = num_rows
        self.deadline = deadline
        self.future = future
        self.enqueued_at = time.perf_counter()
        self.started = False
        self.started_at = 0.0
        self.cancelled = False
        self.trace = trace

    @property
    def finished(self) -> bool:
        return self.cancelled or self.future.done()


@dataclass(slots=True)
class QueuedRow:
    row: EncodedRow
    length: int
    job: Job
    position: int


class DynamicBatcher:
    def __init__(
        self,
        model: str,
        forward: ForwardFn,
        policy: BatchPolicy,
        observer: Observer,
        *,
        packed: bool = False,
        release_memory: ReleaseFn | None = None,
        read_resident_bytes: Callable[[], int | None] = resident_bytes,
    ) -> None:
        """``release_memory`` gives back what the model's batches left its engine holding (None:
        nothing to give back); it runs on the inference thread, between batches."""
        self.model = model
        self.policy = policy
        self.forward = forward
        # A packed graph (distilserve.models.packing) costs the tokens a batch holds, not rows x
        # its longest: batches are taken in arrival order, with no split by length.
        self.packed = packed
        self._observer = observer
        self._queue: list[QueuedRow] = []  # arrival order; the head is the oldest row
        self._queued_tokens = 0
        self._incoming = 0  # requests being tokenized for this model right now
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{model}")
        self._scheduler: asyncio.Task[None] | None = None
        self._closing = False
        self._running: list[QueuedRow] = []  # the batch on the inference thread now
        # What the planner and the wait use: the policy's constants until ``use_cost`` replaces
        # them with this model's calibrated figures.
        self.limits = policy.limits
        self.max_wait_s = policy.max_wait_ms / 1000.0
        self.cost: BatchCost | None = None
        # The memory one batch may use (``use_memory_limit``); None: no limit but the token ones.
        self.memory_limit_bytes: int | None = None
        self.memory_estimate = BatchMemoryEstimate()
        self._release_memory = release_memory
        self._read_resident_bytes = read_resident_bytes
        # The process RSS above which each large batch is followed by a release (None: only idle).
        self.memory_release_above_bytes: int | None = None
        self._holding_memory = False  # a batch ran since the last release
        self._report_costs()

    def use_memory_limit(
        self, limit_bytes: int, estimate: BatchMemoryEstimate, release_above_bytes: int | None = None
    ) -> None:
        """Keep every batch's estimated memory within ``limit_bytes``: a planned batch that
        would need more is cut to the rows that fit (the rest stay queued), and a row that would
        not fit even alone is refused when it is queued (``RowTooLargeForMemoryError``).
        ``release_above_bytes``: while the process holds more, release after each large batch."""
        self.memory_limit_bytes = limit_bytes
        self.memory_estimate = estimate
        self.memory_release_above_bytes = release_above_bytes
        self._observer.batch_memory_limit(self.model, limit_bytes)

    def use_cost(self, cost: BatchCost) -> None:
        """Plan with a calibrated cost: its fixed cost in tokens is the batch overhead, and an
        under-filled batch waits at most one fixed cost (never more than ``max_wait_ms``).

        Why one fixed cost: rows that arrive after a batch has started run in a batch of their
        own, which costs one more fixed cost of inference-thread time; waiting longer than that
        for them costs the rows already queued more than it saves.
        """
        self.cost = cost
        self.limits = replace(self.policy.limits, batch_overhead_tokens=cost.overhead_tokens)
        self.max_wait_s = min(self.policy.max_wait_ms / 1000.0, cost.fixed_s)
        self._report_costs()

    def _report_costs(self) -> None:
        self._observer.batching_costs(
            self.model, self.limits.batch_overhead_tokens, self.max_wait_s, self.cost
        )

    # Lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._scheduler is None:
            self._scheduler = asyncio.get_running_loop().create_task(
                self._schedule(), name=f"batcher-{self.model}"
            )

    async def stop(self) -> None:
        """Refuse new work, fail what is still queued, and wait for the running batch."""
        self._closing = True
        self._wakeup.set()
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
            self._scheduler = None
        for queued in self._queue:
            if not queued.job.finished:
                queued.job.future.set_exception(BatcherClosedError("server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    def abort(self) -> None:
        """Answer every admitted job now with BatcherClosedError (the server's 503 shutting_down),
        queued or in the running batch, and take no more: shutdown's grace period is ending, and
        a request uvicorn cancels answers 500. The running batch finishes on its thread, unread."""
        self._closing = True
        self._wakeup.set()
        for queued in [*self._queue, *self._running]:
            if not queued.job.finished:
                queued.job.future.set_exception(BatcherClosedError("server is shutting down"))

    # Submission ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce a request that is being tokenized, so an under-filled batch may wait for it."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            self._wakeup.set()

    @property
    def queued_rows(self) -> int:
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    async def run_rows(
        self, rows: Sequence[EncodedRow], deadline: float, trace: RequestTrace | None = None
    ) -> list[Any]:
        """Queue rows and wait for their outputs (in order). ``deadline`` is on ``clock.now()``;
        ``trace`` gets the rows' queue and inference times.

        Raises QueueFullError (nothing queued), DeadlineExceededError, BatcherClosedError or
        InferenceFailedError. If the calling task is cancelled (the client left), the rows that
        have not started are dropped.
        """
        if self._closing:
            raise BatcherClosedError("server is shutting down")
        tokens = sum(len(row) for row in rows)
        self._check_memory(rows, trace)
        if self._queued_tokens and self._queued_tokens + tokens > self.policy.max_queue_tokens:
            self._observer.refused(trace, self.model, "queue_tokens")
            raise QueueFullError(self.model, self._queued_tokens, self.policy.max_queue_tokens)
        job = Job(len(rows), deadline, asyncio.get_running_loop().create_future(), trace)
        if not rows:
            return []
        self._queue.extend(QueuedRow(row, len(row), job, index) for index, row in enumerate(rows))
        self._queued_tokens += tokens
        self._update_depth()
        self._wakeup.set()
        try:
            return await asyncio.wait_for(job.future, timeout=max(deadline - clock.now(), 0.0))
        except TimeoutError:
            self._abandon(job)
            raise DeadlineExceededError(
                f"deadline passed after {time.perf_counter() - job.enqueued_at:.3f}s"
            ) from None
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def _check_memory(self, rows: Sequence[EncodedRow], trace: RequestTrace | None) -> None:
        limit = self.memory_limit_bytes
        if limit is None or not rows:
            return
        width = max(len(row) for row in rows)
        if self.memory_estimate.rows_within(limit, width) < 1:
            self._observer.refused(trace, self.model, "memory_budget")
            raise RowTooLargeForMemoryError(self.model, width, self.memory_estimate.row_bytes(width), limit)

    def _abandon(self, job: Job) -> None:
        """Mark a job dead; the scheduler drops its unstarted rows instead of computing them."""
        job.cancelled = True
        self._wakeup.set()

    # Scheduling ------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            self._drop_dead_rows()
            if not self._queue:
                self._wakeup.clear()
                idle_s = self.policy.memory_release_idle_s
                if not self._holding_memory or self._release_memory is None or idle_s is None:
                    await self._wakeup.wait()
                    continue
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=idle_s)
                except TimeoutError:
                    await self._release(loop, "idle")
                continue
            wait_s = self._underfilled_wait()
            if wait_s > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait_s)
                continue
            batch = self._take_batch()
            await self._run_batch(loop, batch)
            self._holding_memory = True
            if self._over_release_mark(batch):
                await self._release(loop, "budget")

    def _over_release_mark(self, batch: Sequence[QueuedRow]) -> bool:
        """Whether the batch just run was large and the process holds more than its release mark."""
        mark = self.memory_release_above_bytes
        if mark is None or self._release_memory is None or not batch:
            return False
        width = max(queued.length for queued in batch)
        if self.memory_estimate.batch_bytes(len(batch), width) < RELEASE_AFTER_BATCH_BYTES:
            return False
        resident = self._read_resident_bytes()
        return resident is not None and resident > mark

    async def _release(self, loop: asyncio.AbstractEventLoop, reason: str) -> None:
        assert self._release_memory is not None
        self._holding_memory = False
        try:
            await loop.run_in_executor(self._executor, self._release_memory)
        except Exception:  # the memory stays held; the next batch and the next release still run
            logger.exception("memory release failed", extra={"model": self.model, "reason": reason})
            return
        self._observer.memory_released(self.model, reason)

    def _underfilled_wait(self) -> float:
        """Seconds worth waiting for more rows before running a batch; 0 to run now."""
        if self._incoming == 0 or self.max_wait_s <= 0:
            return 0.0
        limits = self.limits
        if len(self._queue) >= limits.max_batch_size or self._queued_tokens >= limits.max_batch_tokens:
            return 0.0
        waited = time.perf_counter() - self._queue[0].job.enqueued_at
        return max(self.max_wait_s - waited, 0.0)

    def _drop_dead_rows(self) -> None:
        now = clock.now()
        kept: list[QueuedRow] = []
        dropped = 0
        for queued in self._queue:
            job = queued.job
            if not job.finished and now >= job.deadline:
                # The waiting handler raises the 504; failing the future here frees it at once.
                job.future.set_exception(DeadlineExceededError("deadline passed while queued"))
            if job.finished:
                dropped += 1
                self._queued_tokens -= queued.length
            else:
                kept.append(queued)
        if dropped:
            self._queue = kept
            self._observer.rows_skipped(self.model, dropped)
            self._update_depth()

    def _take_batch(self) -> list[QueuedRow]:
        """The batch that holds the oldest row.

        Padded graph: the queue's rows sorted by length are cut into contiguous groups (each
        within ``max_batch_size`` and ``max_batch_tokens``) so that padded tokens plus
        ``batch_overhead_tokens`` per batch are smallest; the group with the oldest row runs now
        (nothing starves), and the rest stay queued, to be planned again with whatever arrives
        meanwhile. A queue of short and long rows thus runs as a short batch and a long batch
        instead of one batch padded throughout, and the clients of the first batch can send
        their next request while the second runs.

        Packed graph: padding costs next to nothing, so the oldest rows run together, as many as
        ``max_batch_size`` rows and ``max_batch_tokens`` tokens allow (one batch, one fixed cost).
        """
        anchor = self._queue[0]
        if self.packed:
            group = sorted(self._oldest_rows(), key=lambda queued: queued.length)
            position = next(index for index, queued in enumerate(group) if queued is anchor)
            chosen = self._within_memory(group, position)
        else:
            by_length = sorted(self._queue, key=lambda queued: queued.length)
            groups = plan_groups([queued.length for queued in by_length], self.limits)
            position = next(index for index, queued in enumerate(by_length) if queued is anchor)
            start, end = next((start, end) for start, end in groups if start <= position < end)
            chosen = self._within_memory(by_length[start:end], position - start)
        taken = {id(queued) for queued in chosen}
        self._queue = [queued for queued in self._queue if id(queued) not in taken]
        self._queued_tokens -= sum(queued.length for queued in chosen)
        self._update_depth()
        return chosen

    def _oldest_rows(self) -> list[QueuedRow]:
        """The queue's head, in arrival order, within the batch's rows and tokens (at least one)."""
        limits = self.limits
        taken: list[QueuedRow] = []
        tokens = 0
        for queued in self._queue:
            if taken and (
                len(taken) == limits.max_batch_size or tokens + queued.length > limits.max_batch_tokens
            ):
                break
            taken.append(queued)
            tokens += queued.length
        return taken

    def _within_memory(self, group: list[QueuedRow], anchor: int) -> list[QueuedRow]:
        """``group`` (sorted by length), or the run of its rows holding ``group[anchor]`` that
        fits the memory limit at the group's padded width; the rows left out stay queued."""
        limit = self.memory_limit_bytes
        if limit is None:
            return group
        fitting = max(self.memory_estimate.rows_within(limit, group[-1].length), 1)
        if fitting >= len(group):
            return group
        self._observer.memory_split_batch(self.model)
        start = max(min(anchor, len(group) - fitting), 0)
        return group[start : start + fitting]

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[QueuedRow]) -> None:
        observer = self._observer
        now = time.perf_counter()
        traces: list[RequestTrace] = []
        for queued in batch:
            job = queued.job
            if job.trace is not None and job.trace not in traces:  # a request's rows may be several
                traces.append(job.trace)
            if not job.started:
                job.started = True
                job.started_at = now
                if job.trace is not None:
                    job.trace.queue_s = now - job.enqueued_at
                observer.queued(job.trace, self.model, job.enqueued_at, now)
        lengths = [queued.length for queued in batch]
        # Planned here for the metric; the engine assembling the batch gets the same plan from
        # packing's plan cache instead of planning it again.
        computed = packed_tokens(lengths) if self.packed else len(batch) * max(lengths)
        report = BatchReport(self.model, len(batch), sum(lengths), computed, traces)
        observer.batch_planned(report)
        rows = [queued.row for queued in batch]
        self._running = batch
        error: Exception | None = None
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self.forward, rows)
        except Exception as exc:
            error = exc
            logger.exception("batch failed", extra={"model": self.model, "rows": len(batch)})
            for queued in batch:
                if not queued.job.finished:
                    queued.job.future.set_exception(InferenceFailedError(f"inference failed: {exc}"))
            return
        finally:
            self._running = []
            ended = time.perf_counter()
            observer.batch_ran(report, started, ended, error)
        for queued, output in zip(batch, outputs, strict=True):
            job = queued.job
            if job.finished:
                continue
            job.outputs[queued.position] = output
            job.remaining -= 1
            if job.remaining == 0:
                if job.trace is not None:
                    job.trace.inference_s = ended - job.started_at
                job.future.set_result(job.outputs)

    def _update_depth(self) -> None:
        self._observer.queue_changed(self.model, len(self._queue), self._queued_tokens)
