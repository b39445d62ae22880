"""The dynamic batcher on its own, with a fake model that records the batches it is given."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

import pytest

from distilserve.models.batch_cost import BatchCost
from distilserve.models.batching import BatchLimits, EncodedRow
from distilserve.server.batching import (
    DEFAULT_POLICY,
    BatchPolicy,
    DeadlineExceededError,
    DynamicBatcher,
    QueueFullError,
    ReleaseFn,
)
from distilserve.server.metrics import ServerMetrics
from distilserve.server.observer import PrometheusObserver
from tests.server.conftest import WAIT_S, until


def row(length: int, tag: int = 0) -> EncodedRow:
    return EncodedRow(input_ids=[tag] * length, token_type_ids=[0] * length)


class FakeModel:
    """Returns each row's (tag, length), optionally slowly; records every batch.

    With ``release`` cleared, a batch waits in the model until the test sets it; ``entered`` says
    a batch has reached the model, so tests order their steps on events, never on sleeps.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[list[tuple[int, int]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, rows: Sequence[EncodedRow]) -> list[tuple[int, int]]:
        outputs = [(row.input_ids[0], len(row)) for row in rows]
        self.batches.append(outputs)
        self.entered.set()
        if not self.release.wait(WAIT_S):
            raise RuntimeError("the test never released the held batch")
        time.sleep(self.delay_s)  # a slow model, so that requests pile up; no step is ordered by it
        return outputs

    async def until_entered(self) -> None:
        if not await asyncio.to_thread(self.entered.wait, WAIT_S):
            raise AssertionError("no batch reached the model")


def metrics_of(batcher: DynamicBatcher) -> ServerMetrics:
    observer = batcher._observer
    assert isinstance(observer, PrometheusObserver)
    return observer.metrics


def skipped_rows(batcher: DynamicBatcher) -> float:
    value = metrics_of(batcher).registry.get_sample_value("distilserve_skipped_rows_total", {"model": "fake"})
    return 0.0 if value is None else value


def make_batcher(
    model: FakeModel,
    *,
    max_wait_ms: float = DEFAULT_POLICY.max_wait_ms,
    max_queue_tokens: int = DEFAULT_POLICY.max_queue_tokens,
    packed: bool = False,
    memory_release_idle_s: float | None = DEFAULT_POLICY.memory_release_idle_s,
    release_memory: ReleaseFn | None = None,
    read_resident_bytes: Callable[[], int | None] = lambda: None,
    **limits: int,
) -> DynamicBatcher:
    policy = BatchPolicy(
        BatchLimits(**limits),
        max_wait_ms=max_wait_ms,
        max_queue_tokens=max_queue_tokens,
        memory_release_idle_s=memory_release_idle_s,
    )
    batcher = DynamicBatcher(
        "fake",
        model,
        policy,
        PrometheusObserver(ServerMetrics()),
        packed=packed,
        release_memory=release_memory,
        read_resident_bytes=read_resident_bytes,
    )
    batcher.start()
    return batcher


def far() -> float:
    return time.monotonic() + 30


async def test_concurrent_requests_share_batches_and_get_their_own_outputs() -> None:
    model = FakeModel(delay_s=0.01)
    batcher = make_batcher(model, max_batch_size=16, max_batch_tokens=4096)
    lengths = [3 + (index * 7) % 40 for index in range(40)]
    results = await asyncio.gather(
        *(batcher.run_rows([row(length, tag)], far()) for tag, length in enumerate(lengths))
    )
    assert [result[0] for result in results] == list(enumerate(lengths))
    assert len(model.batches) < len(lengths)
    assert all(len(batch) <= 16 for batch in model.batches)
    await batcher.stop()


async def test_a_large_request_is_split_and_reassembled_in_order() -> None:
    model = FakeModel()
    batcher = make_batcher(model, max_batch_size=4, max_batch_tokens=4096)
    rows = [row(1 + (index * 5) % 17, index) for index in range(23)]
    outputs = await batcher.run_rows(rows, far())
    assert [tag for tag, _ in outputs] == list(range(23))
    assert len(model.batches) >= 6  # 23 rows, at most 4 per batch
    await batcher.stop()


async def test_batches_respect_the_token_budget_and_group_similar_lengths() -> None:
    model = FakeModel()
    model.release.clear()  # hold the first batch so that everything else queues up
    batcher = make_batcher(model, max_batch_size=64, max_batch_tokens=200)
    lengths = [5, 50, 6, 48, 7, 49, 5, 47, 6, 50]
    pending = [asyncio.ensure_future(batcher.run_rows([row(length)], far())) for length in lengths]
    await model.until_entered()
    await until(
        lambda: len(model.batches[0]) + batcher.queued_rows == len(lengths), "every row held or queued"
    )
    model.release.set()
    await asyncio.gather(*pending)
    for batch in model.batches:
        batch_lengths = [length for _, length in batch]
        assert len(batch) * max(batch_lengths) <= 200 or len(batch) == 1
    # After the first (held) batch, short rows and long rows never share a batch.
    for batch in model.batches[1:]:
        batch_lengths = [length for _, length in batch]
        assert max(batch_lengths) - min(batch_lengths) <= 3
    await batcher.stop()


async def test_a_packed_model_takes_the_oldest_rows_together_whatever_their_lengths() -> None:
    model = FakeModel()
    model.release.clear()  # hold the first batch so that everything else queues up
    batcher = make_batcher(model, packed=True, max_batch_size=4, max_batch_tokens=120)
    lengths = [3, 5, 50, 6, 48, 7, 49, 5, 47, 6, 50]
    pending = [
        asyncio.ensure_future(batcher.run_rows([row(length, tag)], far()))
        for tag, length in enumerate(lengths)
    ]
    await model.until_entered()
    await until(
        lambda: len(model.batches[0]) + batcher.queued_rows == len(lengths), "every row held or queued"
    )
    first = len(model.batches[0])
    model.release.set()
    await asyncio.gather(*pending)
    # After the held batch, each batch is the queue's head in arrival order, short and long rows
    # together, cut at 4 rows or 120 tokens (real tokens: packing computes little more).
    expected, queue = [], list(enumerate(lengths))[first:]
    while queue:
        batch, tokens = [], 0
        while queue and len(batch) < 4 and (not batch or tokens + queue[0][1] <= 120):
            tokens += queue[0][1]
            batch.append(queue.pop(0))
        expected.append(sorted(batch, key=lambda tagged: tagged[1]))
    assert [sorted(batch, key=lambda tagged: tagged[1]) for batch in model.batches[1:]] == expected
    assert any(
        max(length for _, length in batch) > 40 > min(length for _, length in batch) for batch in expected
    )
    await batcher.stop()


async def test_the_oldest_row_always_rides_the_next_batch() -> None:
    """No starvation: a long row that arrived first is not overtaken by a stream of short ones."""
    model = FakeModel()
    model.release.clear()
    batcher = make_batcher(model, max_batch_size=4, max_batch_tokens=4096)
    blocker = asyncio.ensure_future(batcher.run_rows([row(3, 99)], far()))
    await model.until_entered()  # the blocker's batch is now running (held)
    long_one = asyncio.ensure_future(batcher.run_rows([row(60, 1)], far()))
    await until(lambda: batcher.queued_rows == 1, "the long row queued first")
    shorts = [asyncio.ensure_future(batcher.run_rows([row(4, 2)], far())) for _ in range(12)]
    await until(lambda: batcher.queued_rows == 13, "the short rows queued behind it")
    model.release.set()
    await asyncio.gather(blocker, long_one, *shorts)
    assert (1, 60) in model.batches[1]
    await batcher.stop()


async def test_an_expired_request_is_never_computed() -> None:
    model = FakeModel()
    model.release.clear()
    batcher = make_batcher(model)
    blocker = asyncio.ensure_future(batcher.run_rows([row(3, 1)], far()))
    await model.until_entered()
    with pytest.raises(DeadlineExceededError):
        await batcher.run_rows([row(5, 2)], time.monotonic() + 0.05)
    model.release.set()
    await blocker
    await until(lambda: skipped_rows(batcher) == 1, "the expired row dropped")
    assert all(tag != 2 for batch in model.batches for tag, _ in batch)
    await batcher.stop()


async def test_a_cancelled_request_is_never_computed() -> None:
    model = FakeModel()
    model.release.clear()
    batcher = make_batcher(model)
    blocker = asyncio.ensure_future(batcher.run_rows([row(3, 1)], far()))
    await model.until_entered()
    leaver = asyncio.ensure_future(batcher.run_rows([row(5, 2), row(6, 2)], far()))
    await until(lambda: batcher.queued_rows == 2, "the leaver's rows queued")
    leaver.cancel()
    model.release.set()
    await blocker
    await until(lambda: skipped_rows(batcher) == 2, "the cancelled rows dropped")
    assert all(tag != 2 for batch in model.batches for tag, _ in batch)
    assert batcher.queued_rows == 0 and batcher.queued_tokens == 0
    await batcher.stop()


async def test_the_token_budget_of_the_queue_refuses_new_work() -> None:
    model = FakeModel()
    model.release.clear()
    batcher = make_batcher(model, max_queue_tokens=20)
    running = asyncio.ensure_future(batcher.run_rows([row(4)], far()))
    await model.until_entered()
    queued = asyncio.ensure_future(batcher.run_rows([row(15)], far()))
    await until(lambda: batcher.queued_rows == 1, "the second request queued")
    with pytest.raises(QueueFullError):
        await batcher.run_rows([row(10)], far())
    model.release.set()
    await asyncio.gather(running, queued)
    await batcher.stop()


async def test_an_idle_batcher_does_not_wait_for_company() -> None:
    model = FakeModel()
    # A minute of max_wait_ms: had it waited for company, the 30 s bound would fail, whatever the load.
    batcher = make_batcher(model, max_wait_ms=60_000)
    await asyncio.wait_for(batcher.run_rows([row(5)], far()), timeout=WAIT_S)
    await batcher.stop()


async def test_an_underfilled_batch_waits_for_requests_being_tokenized() -> None:
    model = FakeModel()
    # The wait ends when the announced request arrives, long before a minute: the bound never decides.
    batcher = make_batcher(model, max_wait_ms=60_000, max_batch_size=8)
    announced = asyncio.Event()
    tokenized = asyncio.Event()

    async def late_arrival() -> list[object]:
        # As the server's pipeline does: announced while tokenizing, queued once tokenized.
        with batcher.incoming():
            announced.set()
            await tokenized.wait()  # "tokenizing"
        return await batcher.run_rows([row(5, 2)], far())

    arrival = asyncio.ensure_future(late_arrival())
    await announced.wait()
    first_request = asyncio.ensure_future(batcher.run_rows([row(5, 1)], far()))
    await until(lambda: batcher.queued_rows == 1, "the first row waiting for company")
    tokenized.set()
    first = await first_request
    await arrival
    assert first == [(1, 5)]
    assert len(model.batches) == 1 and sorted(model.batches[0]) == [(1, 5), (2, 5)]
    await batcher.stop()


async def batches_after_a_held_one(
    batcher: DynamicBatcher, model: FakeModel, lengths: list[int]
) -> list[list[int]]:
    """The batches ``lengths`` (queued together behind a held batch) are cut into."""
    model.release.clear()
    blocker = asyncio.ensure_future(batcher.run_rows([row(3, 99)], far()))
    await model.until_entered()
    pending = [asyncio.ensure_future(batcher.run_rows([row(length)], far())) for length in lengths]
    await until(lambda: batcher.queued_rows == len(lengths), "every row queued behind the held batch")
    model.release.set()
    await asyncio.gather(blocker, *pending)
    return sorted(sorted(length for _, length in batch) for batch in model.batches[1:])


async def test_the_planner_uses_the_calibrated_fixed_cost() -> None:
    """Three short rows and a long one: split while a run costs 32 tokens (the constant), one
    batch once the calibrated fixed cost (1 ms at 1 us a token: 1000 tokens) outweighs the padding."""
    constant_model = FakeModel()
    constant = make_batcher(constant_model)
    assert await batches_after_a_held_one(constant, constant_model, [4, 4, 4, 40]) == [[4, 4, 4], [40]]
    await constant.stop()

    calibrated_model = FakeModel()
    calibrated = make_batcher(calibrated_model)
    calibrated.use_cost(BatchCost(fixed_s=0.001, per_token_s=1e-6))
    assert calibrated.limits.batch_overhead_tokens == 1000
    assert await batches_after_a_held_one(calibrated, calibrated_model, [4, 4, 4, 40]) == [[4, 4, 4, 40]]
    await calibrated.stop()


async def test_a_calibrated_wait_is_one_fixed_cost_within_max_wait_ms() -> None:
    batcher = make_batcher(FakeModel(), max_wait_ms=2.0)
    registry = metrics_of(batcher).registry
    assert registry.get_sample_value("distilserve_batch_overhead_tokens", {"model": "fake"}) == 32
    assert registry.get_sample_value("distilserve_batch_fixed_cost_seconds", {"model": "fake"}) is None
    batcher.use_cost(BatchCost(fixed_s=0.0005, per_token_s=1e-5))
    assert batcher.max_wait_s == pytest.approx(0.0005)
    assert registry.get_sample_value("distilserve_batch_max_wait_seconds", {"model": "fake"}) == 0.0005
    assert registry.get_sample_value("distilserve_batch_fixed_cost_seconds", {"model": "fake"}) == 0.0005
    assert registry.get_sample_value("distilserve_batch_token_cost_seconds", {"model": "fake"}) == 1e-5
    assert registry.get_sample_value("distilserve_batch_overhead_tokens", {"model": "fake"}) == 50
    batcher.use_cost(BatchCost(fixed_s=0.5, per_token_s=1e-5))
    assert batcher.max_wait_s == pytest.approx(0.002)  # never longer than --max-wait-ms
    await batcher.stop()


async def test_a_batch_over_the_memory_limit_is_split_and_every_row_answered() -> None:
    from distilserve.models.memory import BatchMemoryEstimate

    model = FakeModel()
    batcher = make_batcher(model, max_wait_ms=0)
    estimate = BatchMemoryEstimate(hidden_size=64)
    batcher.use_memory_limit(estimate.batch_bytes(3, 100), estimate)
    try:
        model.release.clear()
        blocker = asyncio.ensure_future(batcher.run_rows([row(4, tag=99)], far()))
        await model.until_entered()
        # Eight rows queue while the blocker runs: within the token limits one batch, but the
        # memory limit holds three rows of 100 tokens.
        waiting = asyncio.ensure_future(batcher.run_rows([row(100, tag=tag) for tag in range(8)], far()))
        await until(lambda: batcher.queued_rows == 8, "eight rows queued")
        model.release.set()
        outputs, _ = await waiting, await blocker
    finally:
        await batcher.stop()
    assert outputs == [(tag, 100) for tag in range(8)]
    assert [len(batch) for batch in model.batches] == [1, 3, 3, 2]
    observer = batcher._observer
    assert isinstance(observer, PrometheusObserver)
    split = observer.metrics.registry.get_sample_value(
        "distilserve_memory_split_batches_total", {"model": "fake"}
    )
    assert split == 2


async def test_a_row_that_could_never_fit_the_memory_limit_is_refused_before_it_is_queued() -> None:
    from distilserve.models.memory import BatchMemoryEstimate
    from distilserve.server.batching import RowTooLargeForMemoryError

    model = FakeModel()
    batcher = make_batcher(model)
    estimate = BatchMemoryEstimate(hidden_size=64)
    batcher.use_memory_limit(estimate.row_bytes(100), estimate)
    try:
        assert await batcher.run_rows([row(100)], far()) == [(0, 100)]  # exactly fits
        with pytest.raises(RowTooLargeForMemoryError, match="memory budget"):
            await batcher.run_rows([row(10), row(101)], far())
    finally:
        await batcher.stop()
    assert batcher.queued_rows == 0 and len(model.batches) == 1


class Releases:
    """A fake engine release: records the thread it ran on and which batches it came after."""

    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self.after_batches: list[int] = []
        self.threads: list[str] = []

    def __call__(self) -> None:
        self.after_batches.append(len(self.model.batches))
        self.threads.append(threading.current_thread().name)


def releases_counted(batcher: DynamicBatcher, reason: str) -> float:
    value = metrics_of(batcher).registry.get_sample_value(
        "distilserve_memory_releases_total", {"model": "fake", "reason": reason}
    )
    return 0.0 if value is None else value


async def test_an_idle_model_gives_its_memory_back_once_its_queue_is_empty() -> None:
    model = FakeModel()
    releases = Releases(model)
    # An idle time of 0: the release comes as soon as the queue is empty, not only after a while.
    batcher = make_batcher(model, max_batch_size=2, memory_release_idle_s=0.0, release_memory=releases)
    try:
        model.release.clear()  # hold the first batch, so that five more rows queue behind it
        blocker = asyncio.ensure_future(batcher.run_rows([row(4, tag=99)], far()))
        await model.until_entered()
        waiting = asyncio.ensure_future(batcher.run_rows([row(8, tag=tag) for tag in range(5)], far()))
        await until(lambda: batcher.queued_rows == 5, "five rows queued")
        model.release.set()
        await asyncio.gather(blocker, waiting)
        await until(lambda: len(releases.after_batches) == 1, "a release once the queue is empty")
        # Four batches ran back to back (1 + 2 + 2 + 1 rows): no release between them.
        assert releases.after_batches == [4]
        assert releases.threads[0].startswith("infer-fake")  # between batches, on the inference thread
        # Nothing ran since: no second release; the next batch makes the model hold memory again.
        assert await batcher.run_rows([row(3)], far()) == [(0, 3)]
        await until(lambda: len(releases.after_batches) == 2, "a release after the next batch")
    finally:
        await batcher.stop()
    assert releases.after_batches == [4, 5]
    assert releases_counted(batcher, "idle") == 2 and releases_counted(batcher, "budget") == 0


async def test_above_the_release_mark_each_large_batch_is_followed_by_a_release() -> None:
    from distilserve.models.memory import BatchMemoryEstimate

    model = FakeModel()
    releases = Releases(model)
    resident = [900]
    batcher = make_batcher(
        model,
        max_batch_size=1,
        memory_release_idle_s=None,  # never on idle: only the mark releases here
        release_memory=releases,
        read_resident_bytes=lambda: resident[0],
    )
    estimate = BatchMemoryEstimate(hidden_size=384)
    batcher.use_memory_limit(estimate.batch_bytes(4, 512), estimate, release_above_bytes=500)
    try:
        # Rows of 400 tokens are large batches (tens of MiB); rows of 10 are not.
        assert await batcher.run_rows([row(400, 1), row(10, 2), row(400, 3)], far()) == [
            (1, 400),
            (2, 10),
            (3, 400),
        ]
        resident[0] = 100  # under the mark: memory is kept
        await batcher.run_rows([row(400, 4)], far())
    finally:
        await batcher.stop()
    # One row per batch, the oldest first; no release after the short row's batch.
    assert [batch[0][1] for batch in model.batches] == [400, 10, 400, 400]
    assert releases.after_batches == [1, 3]
    assert releases_counted(batcher, "budget") == 2 and releases_counted(batcher, "idle") == 0


async def test_a_failing_release_is_logged_and_the_model_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = FakeModel()
    failures: list[int] = []

    def failing_release() -> None:
        failures.append(len(model.batches))
        raise RuntimeError("arena")

    batcher = make_batcher(model, memory_release_idle_s=0.0, release_memory=failing_release)
    try:
        await batcher.run_rows([row(3)], far())
        await until(lambda: failures == [1], "the release tried")
        assert await batcher.run_rows([row(5, 7)], far()) == [(7, 5)]
        await until(lambda: failures == [1, 2], "tried again after the next batch")
    finally:
        await batcher.stop()
    assert "memory release failed" in caplog.text
    assert releases_counted(batcher, "idle") == 0
