"""Loading an int8 bundle on a CPU its scheme was not made for refits its weights for that CPU.

The CPU is faked through ``load_model(detect_cpu_isa=...)``, so the test means the same on any
machine: the tiny bundles are exported for this machine, and the fake CPU is one whose kernels
want the other weight type. ``tests/models/engines/test_int8_weights.py`` covers the rewrite and
the warning where weights cannot move.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from distilserve.models import load_model
from distilserve.models.bundle import load_manifest
from distilserve.models.export.isa import SCHEMES, Isa, detect_isa, isa_misfit
from tests.tiny_models import Arch, TinyTask

BundleMap = dict[tuple[Arch, TinyTask], Path]


def mismatches(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == "isa_mismatch"]


def test_a_bundle_for_another_cpu_is_refitted_at_load_and_answers_the_same(
    tiny_int8_bundles: BundleMap, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = tiny_int8_bundles[("bert", "text-classification")]
    quantization = load_manifest(bundle).quantization
    other_cpu: Isa = "avx2" if quantization.weight_type == "QInt8" else "avx512_vnni"
    texts = ["still serves", "a second, longer sentence than the first one"]
    as_exported = load_model(bundle, engine="onnxruntime")
    with caplog.at_level(logging.WARNING):
        refitted = load_model(bundle, detect_cpu_isa=lambda: other_cpu, engine="onnxruntime")
    assert mismatches(caplog) == []
    assert as_exported.selection.weights is None
    assert refitted.selection.weights is not None
    assert SCHEMES[other_cpu].weight_type in refitted.selection.weights
    assert refitted.selection.as_info()["weights"] == refitted.selection.weights
    expected = [sorted((s.label, s.score) for s in answer) for answer in as_exported.predict(texts)]
    got = [sorted((s.label, s.score) for s in answer) for answer in refitted.predict(texts)]
    if SCHEMES[detect_isa()].weight_type == "QInt8":
        # This CPU has VNNI (or is arm64): u8 x s8 and u8 x u8 both sum exactly, so moving the
        # weights by 128 changes nothing.
        assert got == expected
    else:
        # AVX2 without VNNI: the refitted s8 weights go through vpmaddubsw, which may saturate
        # (the reason the real refit goes the other way here).
        assert [[label for label, _ in answer] for answer in got] == [
            [label for label, _ in answer] for answer in expected
        ]
        np.testing.assert_allclose(
            [[score for _, score in answer] for answer in got],
            [[score for _, score in answer] for answer in expected],
            atol=0.05,
        )


def test_a_bundle_for_this_kind_of_cpu_loads_quietly(
    tiny_int8_bundles: BundleMap, tiny_bundles: BundleMap, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = tiny_int8_bundles[("bert", "feature-extraction")]
    same_kind = load_manifest(bundle).quantization.isa
    assert same_kind in SCHEMES
    with caplog.at_level(logging.WARNING):
        load_model(bundle, detect_cpu_isa=lambda: same_kind)  # type: ignore[arg-type,return-value]
        # fp32 bundles have no int8 scheme to misfit.
        load_model(tiny_bundles[("bert", "feature-extraction")], detect_cpu_isa=lambda: "avx2")
    assert mismatches(caplog) == []


@pytest.mark.parametrize(
    ("bundle_isa", "weight_type", "cpu_isa", "fits"),
    [
        ("avx512_vnni", "QInt8", "avx512_vnni", True),
        ("avx512_vnni", "QInt8", "avx_vnni", True),  # same u8 x s8 kernels
        ("avx2", "QUInt8", "generic", True),
        ("avx512_vnni", "QInt8", "avx2", False),  # saturation risk
        ("avx2", "QUInt8", "avx512_vnni", False),  # misses VNNI
        ("arm64", "QInt8", "avx2", False),
    ],
)
def test_isa_misfit_follows_the_weight_type_each_cpu_wants(
    bundle_isa: str, weight_type: str, cpu_isa: Isa, fits: bool
) -> None:
    assert (isa_misfit(bundle_isa, weight_type, cpu_isa) is None) == fits
