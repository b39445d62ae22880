"""The engine choice on fake engines and a fake clock: no timing, no OpenVINO needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from distilserve.models import load_manifest
from distilserve.models.bundle import ParityCheck
from distilserve.models.engines import loading
from distilserve.models.engines.base import EngineName
from distilserve.models.engines.loading import open_engine
from distilserve.models.engines.openvino import run_precision
from distilserve.models.engines.select import choose_engine, widened
from distilserve.models.errors import BundleError
from distilserve.models.export import openvino_form
from distilserve.models.export.parity import Outputs, SampleBatch, make_check
from distilserve.models.tokenization import ThreadSafeTokenizer
from tests.tiny_models import Arch, TinyTask

Bundles = dict[tuple[Arch, TinyTask], Path]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeEngine:
    """Costs ``cost`` fake seconds per batch and answers ``logits`` (plus ``offset``)."""

    def __init__(self, name: EngineName, precision: str, cost: float, clock: FakeClock, offset: float = 0.0):
        self.name = name
        self.precision = precision
        self.threads = 0
        self.input_names = ["input_ids", "attention_mask"]
        self.cost = cost
        self.clock = clock
        self.offset = offset
        self.calls = 0

    def run(
        self, feed: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        self.calls += 1
        self.clock.now += self.cost
        return {"logits": feed["input_ids"].astype(np.float32) + self.offset}

    def release_memory(self) -> None:
        pass

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "precision": self.precision, "threads": self.threads}


PROBE = [
    SampleBatch(
        feed={"input_ids": np.arange(6).reshape(2, 3), "attention_mask": np.ones((2, 3))}, context_mask=None
    )
    for _ in range(3)
]


def close_enough(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> ParityCheck:
    gap = max(
        float(np.abs(r["logits"] - c["logits"]).max()) for r, c in zip(reference, candidate, strict=True)
    )
    return make_check("onnxruntime", "openvino", 6, {"max_abs_diff": gap}, {"max_abs_diff": 0.5})


def test_the_faster_engine_that_agrees_is_chosen_with_its_figures() -> None:
    clock = FakeClock()
    reference = FakeEngine("onnxruntime", "int8", 0.010, clock)
    faster = FakeEngine("openvino", "int8", 0.004, clock, offset=0.1)
    chosen, selection = choose_engine(
        [reference, faster], PROBE, ["logits"], close_enough, rounds=3, clock=clock
    )
    assert chosen is faster
    assert (selection.engine, selection.precision, selection.requested) == ("openvino", "int8", "auto")
    # Each engine: one untimed pass for the agreement check, then 3 timed passes of 3 batches.
    assert reference.calls == faster.calls == 3 + 3 * 3
    medians = [timing.median_pass_ms for timing in selection.timings]
    assert medians == pytest.approx([30.0, 12.0])
    assert "2.50x onnxruntime int8" in selection.reason and "30.0 ms" in selection.reason
    assert selection.timings[1].passed and "max_abs_diff" in (selection.timings[1].agreement or "")


def test_a_faster_engine_that_disagrees_is_not_chosen() -> None:
    clock = FakeClock()
    reference = FakeEngine("onnxruntime", "int8", 0.010, clock)
    wrong = FakeEngine("openvino", "int8", 0.001, clock, offset=3.0)
    chosen, selection = choose_engine(
        [reference, wrong], PROBE, ["logits"], close_enough, rounds=2, clock=clock
    )
    assert chosen is reference
    assert not selection.timings[1].passed
    assert "openvino disagreed" in selection.reason


def test_onnxruntime_stays_when_it_is_faster() -> None:
    clock = FakeClock()
    reference = FakeEngine("onnxruntime", "int8", 0.002, clock)
    slower = FakeEngine("openvino", "int8", 0.003, clock)
    chosen, selection = choose_engine(
        [reference, slower], PROBE, ["logits"], close_enough, rounds=2, clock=clock
    )
    assert chosen is reference and "it was the fastest" in selection.reason


class ShapePreparingEngine(FakeEngine):
    """Like OpenVINO's CPU plugin: a batch of a width it has not run costs ``new_shape_cost``
    (kernels prepared for the shape), one it has run costs ``cost``."""

    def __init__(self, cost: float, new_shape_cost: float, clock: FakeClock) -> None:
        super().__init__("openvino", "int8", cost, clock)
        self.new_shape_cost = new_shape_cost
        self.widths: list[int] = []

    def run(
        self, feed: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        width = feed["input_ids"].shape[1]
        if width not in self.widths:
            self.clock.now += self.new_shape_cost - self.cost
        self.widths.append(width)
        return super().run(feed, output_names)


def test_timed_rounds_meet_new_shapes_so_an_engine_fast_only_on_seen_shapes_is_not_chosen() -> None:
    clock = FakeClock()
    reference = FakeEngine("onnxruntime", "int8", 0.010, clock)
    preparing = ShapePreparingEngine(cost=0.004, new_shape_cost=0.030, clock=clock)
    # Timed on the warm-up's shapes again, it looks 2.5x faster...
    chosen, _ = choose_engine([reference, preparing], PROBE, ["logits"], close_enough, rounds=3, clock=clock)
    assert chosen is preparing
    # ...but each timed round at new widths (3 tokens, then 4, 5, 6) shows what traffic costs it.
    preparing.widths.clear()
    chosen, selection = choose_engine(
        [reference, preparing], PROBE, ["logits"], close_enough, rounds=3, clock=clock, widen_to=6
    )
    assert chosen is reference and "each round at new widths" in selection.reason
    assert preparing.widths == [3] * 3 + [4] * 3 + [5] * 3 + [6] * 3
    # The limit caps the widening: past it a round runs the widest allowed shape again.
    preparing.widths.clear()
    choose_engine([reference, preparing], PROBE, ["logits"], close_enough, rounds=3, clock=clock, widen_to=4)
    assert preparing.widths == [3] * 3 + [4] * 9


def test_a_widened_batch_is_the_same_rows_with_masked_padding() -> None:
    batch = SampleBatch(
        feed={"input_ids": np.arange(1, 7).reshape(2, 3), "attention_mask": np.ones((2, 3), dtype=np.int64)},
        context_mask=np.ones((2, 3), dtype=bool),
    )
    wide = widened(batch, 2, limit=512)
    assert wide.feed["input_ids"].shape == (2, 5) and wide.context_mask is not None
    assert (wide.feed["input_ids"][:, :3] == batch.feed["input_ids"]).all()
    assert not wide.feed["attention_mask"][:, 3:].any() and not wide.context_mask[:, 3:].any()
    assert widened(batch, 2, limit=3) is batch


def test_bf16_only_where_the_cpu_has_it() -> None:
    assert run_precision("fp32", frozenset({"avx512f", "avx512_bf16"})) == "bf16"
    assert run_precision("fp32", frozenset({"amx_bf16"})) == "bf16"
    assert run_precision("fp32", frozenset({"avx2"})) == "fp32"
    assert run_precision("int8", frozenset({"avx512_bf16"})) == "int8"


def test_without_openvino_auto_is_onnxruntime_and_says_why(
    tiny_int8_bundles: Bundles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "openvino_missing", lambda: "openvino is not installed (pip install x)")
    bundle = tiny_int8_bundles[("bert", "text-classification")]
    manifest = load_manifest(bundle)
    tokenizer = ThreadSafeTokenizer.from_file(bundle / "tokenizer.json")
    engine, selection = open_engine(bundle, manifest, tokenizer, loading.SessionOptions(), "auto")
    assert engine.name == "onnxruntime" and selection.engine == "onnxruntime"
    assert "openvino is not installed" in selection.reason
    with pytest.raises(
        BundleError, match="--engine openvino cannot run this bundle: openvino is not installed"
    ):
        open_engine(bundle, manifest, tokenizer, loading.SessionOptions(), "openvino")


def test_an_int8_bundle_without_an_openvino_form_stays_on_onnxruntime(tiny_int8_bundles: Bundles) -> None:
    bundle = tiny_int8_bundles[("bert", "text-classification")]
    manifest = load_manifest(bundle)
    assert manifest.openvino is None
    tokenizer = ThreadSafeTokenizer.from_file(bundle / "tokenizer.json")
    engine, selection = open_engine(bundle, manifest, tokenizer, loading.SessionOptions(), "auto")
    assert engine.name == "onnxruntime"
    assert selection.timings == []


def test_export_auto_writes_no_openvino_form_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_form, "openvino_export_missing", lambda: "openvino not installed")
    assert openvino_form.resolve_mode("auto") == "none"
    assert openvino_form.resolve_mode("int8") == "int8"
    monkeypatch.setattr(openvino_form, "openvino_export_missing", lambda: None)
    assert openvino_form.resolve_mode("auto") == "int8"
    assert openvino_form.resolve_mode("auto", quantize="none") == "none"
