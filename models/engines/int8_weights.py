"""Fit an int8 graph's weights to the CPU that serves it, at load time and without loss.

An int8 bundle's GEMM weights are either s8 (the scheme for VNNI and arm64) or u8 (the scheme
for AVX2 without VNNI), chosen for the export machine's CPU (``models.export.isa``). A bundle is
often served on another kind of CPU, and then one of two things goes wrong in ONNX Runtime:

* s8 weights on AVX2 without VNNI run through ``vpmaddubsw``, whose 16-bit pair sums saturate:
  answers change. CI's AVX2 runner scored the shipped reader 1.8 F1 off its card this way.
* u8 weights on a VNNI CPU cannot use the u8 x s8 VNNI kernels and run slower.

Both are fixed by moving the weights by 128 together with their zero point: ``s8 + 128`` with
zero point ``z + 128`` is the same real value ``(q - z) * scale`` as u8, and back. The integer
products are exact on every kernel that does not saturate, so the refitted graph computes what
the exporter checked, bit for bit on the integer side.

The rewrite works on the serialized ``ModelProto`` through a subset of ``onnx.proto`` declared
here: the server's runtime has protobuf (ONNX Runtime's dependency) but not the ``onnx``
package. Protobuf keeps every field the subset does not declare, so the rest of the graph
passes through unchanged.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from distilserve.models.bundle import Manifest
from distilserve.models.export.isa import SCHEMES, Isa, QuantTypeName, isa_misfit, log_isa_fit

logger = logging.getLogger(__name__)

# onnx.proto's TensorProto.DataType values for the two int8 types.
ONNX_UINT8 = 2
ONNX_INT8 = 3
WEIGHT_TYPE_CODES: dict[QuantTypeName, int] = {"QUInt8": ONNX_UINT8, "QInt8": ONNX_INT8}

# The integer GEMMs ONNX Runtime runs on int8 weights: (domain, op type) -> the input positions
# of the weight and of its zero point. ``export`` makes MatMulIntegerToFloat (per-row scales) or
# MatMulInteger (per-tensor, ``quantize_dynamic``); DynamicQuantizeMatMul is ORT's fusion of the
# latter, found in graphs optimized ahead of time.
INTEGER_GEMMS: dict[tuple[str, str], tuple[int, int]] = {
    ("", "MatMulInteger"): (1, 3),
    ("com.microsoft", "MatMulIntegerToFloat"): (1, 5),
    ("com.microsoft", "DynamicQuantizeMatMul"): (1, 3),
}


@dataclass(frozen=True, slots=True)
class Refit:
    """What ``refit_weights`` did: the new graph, how many weights moved and how many could not."""

    model: bytes
    weights: int
    left: int


def _field(
    name: str, number: int, kind: int, *, repeated: bool = False, packed: bool = False, type_name: str = ""
) -> Any:
    from google.protobuf import descriptor_pb2

    label = descriptor_pb2.FieldDescriptorProto
    field = descriptor_pb2.FieldDescriptorProto(
        name=name,
        number=number,
        type=kind,
        label=label.LABEL_REPEATED if repeated else label.LABEL_OPTIONAL,
    )
    if type_name:  # only message fields name a type; an empty one still counts as set
        field.type_name = type_name
    if packed:  # as onnx.proto declares int32_data
        field.options.packed = True
    return field


@cache
def _model_class() -> Any:
    """``ModelProto`` with only what the rewrite reads: graph nodes' inputs and kinds, and
    initializers' names, types, shapes and raw bytes (field numbers from onnx.proto)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    types = descriptor_pb2.FieldDescriptorProto
    package = "distilserve_onnx_subset"
    proto = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto2")
    proto.message_type.add(
        name="TensorProto",
        field=[
            _field("dims", 1, types.TYPE_INT64, repeated=True),
            _field("data_type", 2, types.TYPE_INT32),
            _field("int32_data", 5, types.TYPE_INT32, repeated=True, packed=True),
            _field("name", 8, types.TYPE_STRING),
            _field("raw_data", 9, types.TYPE_BYTES),
        ],
    )
    proto.message_type.add(
        name="NodeProto",
        field=[
            _field("input", 1, types.TYPE_STRING, repeated=True),
            _field("op_type", 4, types.TYPE_STRING),
            _field("domain", 7, types.TYPE_STRING),
        ],
    )
    proto.message_type.add(
        name="GraphProto",
        field=[
            _field("node", 1, types.TYPE_MESSAGE, repeated=True, type_name=f".{package}.NodeProto"),
            _field("initializer", 5, types.TYPE_MESSAGE, repeated=True, type_name=f".{package}.TensorProto"),
        ],
    )
    proto.message_type.add(
        name="ModelProto",
        field=[_field("graph", 7, types.TYPE_MESSAGE, type_name=f".{package}.GraphProto")],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.ModelProto"))


def _element_count(tensor: Any) -> int:
    return int(np.prod(list(tensor.dims), dtype=np.int64))  # 1 for a scalar (no dims)


def _stored_values(tensor: Any) -> np.ndarray | None:
    """The int8 tensor's values as int16, or None when they are not all there. ONNX keeps them
    either as raw bytes (the exporters' weights) or one per ``int32_data`` entry (small tensors
    such as ``quantize_dynamic``'s zero points)."""
    count = _element_count(tensor)
    if tensor.HasField("raw_data"):
        dtype = np.int8 if tensor.data_type == ONNX_INT8 else np.uint8
        values = np.frombuffer(tensor.raw_data, dtype=dtype)
    else:
        values = np.asarray(tensor.int32_data, dtype=np.int32)
    return values.astype(np.int16) if values.size == count else None


def _shift(tensor: Any, target: int) -> None:
    """Move one int8 tensor to ``target``'s type by 128, in place (the caller checked its form)."""
    values = _stored_values(tensor)
    assert values is not None
    values = values + 128 if target == ONNX_UINT8 else values - 128
    if tensor.HasField("raw_data"):
        tensor.raw_data = values.astype(np.uint8 if target == ONNX_UINT8 else np.int8).tobytes()
    else:
        tensor.int32_data[:] = values.astype(np.int32).tolist()
    tensor.data_type = target


def refit_weights(model: bytes, weight_type: QuantTypeName) -> Refit:
    """The graph with every integer GEMM weight of the other int8 type moved to ``weight_type``.

    A weight moves with its zero point, so both must be initializers of the same type, with all
    their values stored, and read only as a GEMM's weight or zero point (a tensor read elsewhere keeps
    its type for that reader's sake). Weights that do not meet this are counted in ``left`` and
    stay as they are: the graph is still correct, only not fitted there.
    """
    target = WEIGHT_TYPE_CODES[weight_type]
    source = ONNX_INT8 if target == ONNX_UINT8 else ONNX_UINT8
    parsed = _model_class().FromString(model)
    graph = parsed.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    # Every way each tensor is read: (op kind, position).
    readers: dict[str, set[tuple[str, str, int]]] = defaultdict(set)
    for node in graph.node:
        for position, name in enumerate(node.input):
            readers[name].add((node.domain, node.op_type, position))
    pairs: set[tuple[str, str | None]] = set()
    for node in graph.node:
        positions = INTEGER_GEMMS.get((node.domain, node.op_type))
        if positions is None or len(node.input) <= positions[0]:
            continue
        weight = node.input[positions[0]]
        zero_point = node.input[positions[1]] if len(node.input) > positions[1] else ""
        if weight in initializers and initializers[weight].data_type == source:
            pairs.add((weight, zero_point or None))

    def read_only_as(name: str, slot: int) -> bool:
        """Whether every reader of ``name`` is an integer GEMM taking it as input ``slot`` (0: the
        weight, 1: its zero point)."""
        return all(
            (domain, op) in INTEGER_GEMMS and INTEGER_GEMMS[(domain, op)][slot] == position
            for domain, op, position in readers[name]
        )

    def movable(name: str | None, slot: int) -> bool:
        tensor = initializers.get(name) if name else None
        return (
            tensor is not None
            and tensor.data_type == source
            and _stored_values(tensor) is not None
            and read_only_as(tensor.name, slot)
        )

    # Without a zero point an s8 weight's is 0, and u8 needs 128: there is no input to move.
    fitted = {pair for pair in pairs if movable(pair[0], 0) and movable(pair[1], 1)}
    # A tensor shared with a pair that cannot move keeps its type, and so does its partner.
    while True:
        stuck = {name for pair in pairs - fitted for name in pair if name is not None}
        blocked = {pair for pair in fitted if stuck.intersection(pair)}
        if not blocked:
            break
        fitted -= blocked
    moved = {name for pair in fitted for name in pair if name is not None}
    for name in sorted(moved):
        _shift(initializers[name], target)
    weights = len({weight for weight, _ in fitted})
    left = len({weight for weight, _ in pairs}) - weights
    return Refit(parsed.SerializeToString() if weights else model, weights, left)


@dataclass(frozen=True, slots=True)
class WeightFit:
    """The graph ONNX Runtime should load for this CPU (None: the bundle's file as it is) and,
    when it was refitted, what was done (``/info``'s ``engine.weights``)."""

    model: bytes | None = None
    note: str | None = None


def fit_to_cpu(model_path: Path, manifest: Manifest, cpu_isa: Isa) -> WeightFit:
    """The bundle's int8 graph with its weights in the type this CPU's kernels want.

    A bundle made for this kind of CPU, or not int8, is loaded as it is. One made for another
    is refitted in memory (the bundle on disk, and its hashes, stay as exported) and logged as
    ``int8_refit``; where some weights cannot move, the load warns with the fix (re-export on
    this machine) as before.
    """
    quantization = manifest.quantization
    bundle = model_path.parent
    if quantization.mode != "int8" or isa_misfit(quantization.isa, quantization.weight_type, cpu_isa) is None:
        return WeightFit()
    wanted = SCHEMES[cpu_isa].weight_type
    refit = refit_weights(model_path.read_bytes(), wanted)
    if refit.left or not refit.weights:
        # Not all of it: the rest keeps the misfit, which the warning names with its fix.
        log_isa_fit(bundle, quantization.isa, quantization.weight_type, cpu_isa, source=manifest.source.id)
        if not refit.weights:
            return WeightFit()
    note = (
        f"{wanted} for {cpu_isa}, refitted at load from the bundle's {quantization.weight_type} "
        f"(made for {quantization.isa}): {refit.weights} weights moved by 128 with their zero points"
        + (f", {refit.left} left as they were" if refit.left else "")
    )
    logger.info(
        "int8 weights of %s refitted for this CPU: %s",
        bundle,
        note,
        extra={
            "event": "int8_refit",
            "bundle": str(bundle),
            "bundle_isa": quantization.isa,
            "bundle_weight_type": quantization.weight_type,
            "cpu_isa": cpu_isa,
            "weight_type": wanted,
            "weights_moved": refit.weights,
            "weights_left": refit.left,
        },
    )
    return WeightFit(refit.model, note)
