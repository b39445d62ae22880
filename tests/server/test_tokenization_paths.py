"""The tokenization settings (inline on the loop, coalesced groups, encode_batch) change where
and how requests are tokenized, never what they get back: results, errors and metrics."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from distilserve.models import load_model
from distilserve.models.batching import EncodedRow
from distilserve.models.errors import InputError
from distilserve.models.tasks import Prepared
from distilserve.server.pipeline import TokenizeCoalescer
from tests.server.conftest import WAIT_S, BundleMap, metric, running_app

LONG_TEXT = "word " * 400  # beyond the tiny models' 128 tokens
CONTEXT = "The hotel opened in 1921 near the airport in Paris. Its restaurant was charming."

REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/classify", {"input": "the film was wonderful"}),
    ("/v1/classify", {"input": ["the film was wonderful", "awful", LONG_TEXT], "top_k": None}),
    ("/v1/classify", {"input": ["fine", "", LONG_TEXT]}),
    ("/v1/classify", {"input": ["fine", LONG_TEXT, ""], "truncate": False}),
    ("/v1/classify", {"input": LONG_TEXT, "truncate": False}),
    ("/v1/classify", {"input": " "}),
    ("/v1/embeddings", {"input": ["one sentence", "and another, longer sentence than the first"]}),
    ("/v1/embeddings", {"input": "short"}),
    ("/v1/answer", {"inputs": {"question": "Where did the hotel open?", "context": CONTEXT}}),
    ("/v1/answer", {"inputs": {"question": "", "context": CONTEXT}}),
]

VARIANTS: dict[str, dict[str, Any]] = {
    "inline": {"tokenize_inline_chars": 10_000},
    "coalesced": {"coalesce_tokenization": True},
    "encode_batch": {"tokenize_batch": True},
    "all": {"tokenize_inline_chars": 64, "coalesce_tokenization": True, "tokenize_batch": True},
}


async def answers(model_args: list[str], **overrides: Any) -> tuple[list[tuple[int, Any]], float]:
    """Every request's status and body, and how many tokenizations the metrics counted."""
    async with running_app(model_args, **overrides) as (app, client):
        results = []
        for route, body in REQUESTS:
            response = await client.post(route, json=body)
            results.append((response.status_code, response.json()))
        counted = sum(
            metric(app, "distilserve_tokenization_seconds_count", model=model)
            for model in ("sentiment", "reader", "encoder")
        )
        return results, counted


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_each_tokenization_path_answers_as_the_default_one(model_args: list[str], variant: str) -> None:
    expected, expected_count = await answers(model_args)
    assert {status for status, _ in expected} == {200, 422}  # the cases cover results and errors
    got, count = await answers(model_args, **VARIANTS[variant])
    for (route, body), want, have in zip(REQUESTS, expected, got, strict=True):
        assert have == want, (route, body)
    assert count == expected_count


def test_encode_batch_prepares_as_one_by_one(tiny_bundles: BundleMap) -> None:
    runtime = load_model(tiny_bundles[("distilbert", "text-classification")])
    texts: list[Any] = ["a short one", "", "the service was slow and the plot boring", LONG_TEXT, 3]
    for params in (None, runtime.processor.default_params().__class__(truncate=False)):
        batched = runtime.prepare_each(texts, params)
        for text, result in zip(texts, batched, strict=True):
            try:
                alone: Prepared | InputError = runtime.prepare(text, params)
            except InputError as exc:
                alone = exc
            if isinstance(alone, InputError):
                assert type(result) is type(alone) and str(result) == str(alone)
            else:
                assert isinstance(result, Prepared)
                assert result.rows == alone.rows and result.num_tokens == alone.num_tokens


class FakeRuntime:
    """Prepares an item into one row of its length; "bad" is an input error, "hold" waits."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.batched_calls: list[tuple[list[str], Any]] = []

    def prepare(self, item: str, params: Any) -> Prepared:
        if item == "bad":
            raise InputError("bad item")
        if item == "hold":
            self.entered.set()
            if not self.release.wait(WAIT_S):
                raise RuntimeError("the test never released the held item")
        row = EncodedRow(input_ids=[1] * len(item), token_type_ids=[0] * len(item))
        return Prepared(rows=[row], context=item, num_tokens=len(item))

    def prepare_each(self, items: Sequence[str], params: Any) -> list[Prepared | InputError]:
        self.batched_calls.append((list(items), params))
        results: list[Prepared | InputError] = []
        for item in items:
            try:
                results.append(self.prepare(item, params))
            except InputError as exc:
                results.append(exc)
        return results


class CountingLane(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.calls = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize("use_batch", [False, True])
async def test_requests_of_one_loop_turn_share_one_lane_call_and_keep_their_own_errors(
    use_batch: bool,
) -> None:
    lane = CountingLane()
    runtime = FakeRuntime()
    coalescer = TokenizeCoalescer(runtime, lane, use_batch=use_batch)  # type: ignore[arg-type]
    requests: list[Sequence[str]] = [["abc"], ["de", "bad"], ["fghij"], ["bad"]]
    results = await asyncio.gather(
        *(coalescer.prepare(items, None, "input") for items in requests), return_exceptions=True
    )
    assert lane.calls == 1
    # With --tokenize-batch, the whole group is one prepare_each call (one encode_batch).
    assert runtime.batched_calls == ([(["abc", "de", "bad", "fghij", "bad"], None)] if use_batch else [])
    assert [prepared.context for prepared in results[0]] == ["abc"]  # type: ignore[union-attr]
    assert isinstance(results[1], InputError) and results[1].param == "input[1]"
    assert [prepared.num_tokens for prepared in results[2]] == [5]  # type: ignore[union-attr]
    assert isinstance(results[3], InputError) and results[3].param == "input"
    # A later turn is a new group.
    assert [p.context for p in await coalescer.prepare(["later"], "other", "input")] == ["later"]
    assert lane.calls == 2
    lane.shutdown()


async def test_a_request_that_leaves_does_not_disturb_its_group() -> None:
    runtime = FakeRuntime()
    runtime.release.clear()
    lane = CountingLane()
    coalescer = TokenizeCoalescer(runtime, lane, use_batch=False)  # type: ignore[arg-type]
    leaver = asyncio.ensure_future(coalescer.prepare(["hold"], None, "input"))
    stayer = asyncio.ensure_future(coalescer.prepare(["stay"], None, "input"))
    if not await asyncio.to_thread(runtime.entered.wait, WAIT_S):
        raise AssertionError("the group never reached the lane")
    leaver.cancel()
    runtime.release.set()
    assert [p.context for p in await stayer] == ["stay"]
    with pytest.raises(asyncio.CancelledError):
        await leaver
    assert lane.calls == 1
    lane.shutdown()


async def test_a_batched_group_makes_one_call_per_distinct_parameters() -> None:
    lane = CountingLane()
    runtime = FakeRuntime()
    coalescer = TokenizeCoalescer(runtime, lane, use_batch=True)  # type: ignore[arg-type]
    calls = [(["ab"], "truncate"), (["cde", "f"], "keep"), (["ghij"], "truncate")]
    results = await asyncio.gather(*(coalescer.prepare(items, params, "input") for items, params in calls))
    assert [[prepared.context for prepared in result] for result in results] == [
        ["ab"],
        ["cde", "f"],
        ["ghij"],
    ]
    assert runtime.batched_calls == [(["ab", "ghij"], "truncate"), (["cde", "f"], "keep")]
    assert lane.calls == 1
    lane.shutdown()
