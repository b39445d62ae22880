"""Refitting int8 weights to the serving CPU: on small hand-made graphs, checked with ``onnx``
and run with ONNX Runtime.

The graphs' values are small (activations below 32, weights within +-8), so that no kernel of
any CPU saturates on them: both weight types compute exactly, and their outputs must be equal.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from distilserve.models.bundle import load_manifest
from distilserve.models.engines.int8_weights import fit_to_cpu, refit_weights
from distilserve.models.export.isa import SCHEMES, Isa
from tests.tiny_models import Arch, TinyTask

Bundles = dict[tuple[Arch, TinyTask], Path]
ROWS, DEPTH, WIDTH = 3, 16, 5


def weight_values(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-8, 9, size=(DEPTH, WIDTH)).astype(np.int8)


def int8_graph(
    *,
    per_row: bool = False,
    zero_point: bool = True,
    zero_point_in_int32_data: bool = False,
    zero_point_also_read_by: str | None = None,
) -> bytes:
    """``x (u8 [ROWS, DEPTH]) @ W (s8 [DEPTH, WIDTH])``: ONNX's MatMulInteger, or ORT's
    MatMulIntegerToFloat (the per-row export's form) when ``per_row``."""
    weight = numpy_helper.from_array(weight_values(), "weight")
    initializers = [weight]
    zero_point_name = ""
    if zero_point:
        zero_point_name = "weight_zero_point"
        if zero_point_in_int32_data:  # how quantize_dynamic stores per-channel zero points
            initializers.append(helper.make_tensor(zero_point_name, TensorProto.INT8, [WIDTH], [0] * WIDTH))
        else:
            initializers.append(numpy_helper.from_array(np.zeros(WIDTH, dtype=np.int8), zero_point_name))
    initializers.append(numpy_helper.from_array(np.array(0, dtype=np.uint8), "x_zero_point"))
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT if per_row else TensorProto.INT32, [None, WIDTH])
    ]
    if per_row:
        initializers += [
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "x_scale"),
            numpy_helper.from_array(np.full(WIDTH, 0.5, dtype=np.float32), "weight_scale"),
        ]
        inputs = ["x", "weight", "x_scale", "weight_scale", "x_zero_point", zero_point_name]
        nodes = [helper.make_node("MatMulIntegerToFloat", inputs, ["y"], domain="com.microsoft")]
    else:
        nodes = [helper.make_node("MatMulInteger", ["x", "weight", "x_zero_point", zero_point_name], ["y"])]
    if zero_point_also_read_by is not None:
        nodes.append(helper.make_node(zero_point_also_read_by, [zero_point_name], ["zero_point_copy"]))
        outputs.append(helper.make_tensor_value_info("zero_point_copy", TensorProto.INT8, [WIDTH]))
    graph = helper.make_graph(
        nodes,
        "int8",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, DEPTH])],
        outputs,
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="distilserve-tests")
    model.ir_version = 8
    model.doc_string = "kept through the refit"
    return model.SerializeToString()


def run(model: bytes) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).integers(0, 32, size=(ROWS, DEPTH)).astype(np.uint8)
    return session.run(["y"], {"x": x})[0]


def tensors(model: bytes) -> dict[str, np.ndarray]:
    graph = onnx.load_from_string(model).graph
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}


@pytest.mark.parametrize("per_row", [False, True], ids=["MatMulInteger", "MatMulIntegerToFloat"])
def test_s8_weights_become_u8_with_the_same_outputs(per_row: bool) -> None:
    original = int8_graph(per_row=per_row)
    refit = refit_weights(original, "QUInt8")
    assert (refit.weights, refit.left) == (1, 0)
    onnx.checker.check_model(onnx.load_from_string(refit.model))
    moved = tensors(refit.model)
    assert moved["weight"].dtype == np.uint8 and moved["weight_zero_point"].dtype == np.uint8
    np.testing.assert_array_equal(moved["weight"].astype(np.int16) - 128, weight_values())
    np.testing.assert_array_equal(moved["weight_zero_point"], np.full(WIDTH, 128))
    np.testing.assert_array_equal(run(refit.model), run(original))


def test_the_rest_of_the_model_passes_through() -> None:
    original = onnx.load_from_string(int8_graph())
    refit = onnx.load_from_string(refit_weights(int8_graph(), "QUInt8").model)
    assert (refit.producer_name, refit.doc_string, refit.ir_version) == (
        original.producer_name,
        original.doc_string,
        original.ir_version,
    )
    assert [(op.domain, op.version) for op in refit.opset_import] == [
        (op.domain, op.version) for op in original.opset_import
    ]
    assert refit.graph.node == original.graph.node
    assert refit.graph.input == original.graph.input and refit.graph.output == original.graph.output


def test_u8_weights_go_back_to_s8_exactly() -> None:
    original = int8_graph()
    there = refit_weights(original, "QUInt8").model
    back = refit_weights(there, "QInt8")
    assert (back.weights, back.left) == (1, 0)
    restored = tensors(back.model)
    for name, values in tensors(original).items():
        assert restored[name].dtype == values.dtype, name
        np.testing.assert_array_equal(restored[name], values)


def test_zero_points_kept_in_int32_data_move_too() -> None:
    original = int8_graph(zero_point_in_int32_data=True)
    refit = refit_weights(original, "QUInt8")
    assert (refit.weights, refit.left) == (1, 0)
    np.testing.assert_array_equal(tensors(refit.model)["weight_zero_point"], np.full(WIDTH, 128))
    np.testing.assert_array_equal(run(refit.model), run(original))


def test_a_graph_already_in_the_wanted_type_is_returned_as_it_is() -> None:
    original = int8_graph()
    refit = refit_weights(original, "QInt8")
    assert (refit.weights, refit.left) == (0, 0)
    assert refit.model is original


def test_a_weight_without_a_zero_point_cannot_move() -> None:
    # s8's implicit zero point is 0 and u8 would need 128: there is no input to put it in.
    original = int8_graph(zero_point=False)
    refit = refit_weights(original, "QUInt8")
    assert (refit.weights, refit.left) == (0, 1)
    assert refit.model is original


def test_a_zero_point_read_by_another_node_keeps_its_type_and_so_does_its_weight() -> None:
    original = int8_graph(zero_point_also_read_by="Identity")
    refit = refit_weights(original, "QUInt8")
    assert (refit.weights, refit.left) == (0, 1)
    assert refit.model is original


@pytest.fixture
def int8_bundle(tiny_int8_bundles: Bundles) -> Path:
    return tiny_int8_bundles[("bert", "text-classification")]


def other_cpu_of(bundle: Path) -> Isa:
    """A CPU whose kernels want the other weight type than the bundle has."""
    return "avx2" if load_manifest(bundle).quantization.weight_type == "QInt8" else "avx512_vnni"


def test_a_bundle_for_this_kind_of_cpu_is_not_touched(int8_bundle: Path) -> None:
    manifest = load_manifest(int8_bundle)
    same_kind: Isa = manifest.quantization.isa  # type: ignore[assignment]
    fit = fit_to_cpu(int8_bundle / "model.onnx", manifest, same_kind)
    assert fit.model is None and fit.note is None


def test_a_bundle_for_another_cpu_is_refitted_and_logged(
    int8_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = load_manifest(int8_bundle)
    other_cpu = other_cpu_of(int8_bundle)
    with caplog.at_level(logging.INFO):
        fit = fit_to_cpu(int8_bundle / "model.onnx", manifest, other_cpu)
    assert fit.model is not None and fit.note is not None
    assert SCHEMES[other_cpu].weight_type in fit.note and other_cpu in fit.note
    (record,) = [record for record in caplog.records if getattr(record, "event", None) == "int8_refit"]
    assert record.__dict__["cpu_isa"] == other_cpu
    assert record.__dict__["weight_type"] == SCHEMES[other_cpu].weight_type
    assert record.__dict__["weights_moved"] > 0 and record.__dict__["weights_left"] == 0
    assert not [record for record in caplog.records if getattr(record, "event", None) == "isa_mismatch"]
    # On disk the bundle is as exported: its hashes still verify.
    load_manifest(int8_bundle, verify_hashes=True)


def test_weights_that_cannot_move_keep_the_warning_with_the_fix(
    int8_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A graph whose weights have no zero point (as an s8 graph may): nothing moves, so the load
    warns as before, with the fix."""
    manifest = load_manifest(int8_bundle)
    quantization = manifest.quantization.model_copy(update={"weight_type": "QInt8", "isa": "avx512_vnni"})
    manifest = manifest.model_copy(update={"quantization": quantization})
    model_path = tmp_path / "model.onnx"
    model_path.write_bytes(int8_graph(zero_point=False))
    with caplog.at_level(logging.INFO):
        fit = fit_to_cpu(model_path, manifest, "avx2")
    assert fit.model is None and fit.note is None
    (record,) = [record for record in caplog.records if getattr(record, "event", None) == "isa_mismatch"]
    assert record.levelno == logging.WARNING and "--isa auto" in record.getMessage()
