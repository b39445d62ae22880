"""Graph fusion and int8 quantization: per-row (the default) or ONNX Runtime's per-tensor dynamic.

Two int8 schemes, chosen with ``export --activation-scales``; both quantize weights once
(per output channel) and activations at run time, and differ in what one activation scale covers:

* ``per-tensor``: ONNX Runtime's ``quantize_dynamic``. One scale for the whole activation
  tensor, computed over the batch, padding included: a sentence's result depends on the rows
  it is batched with. On the shipped SST-2 student, each dev sentence alone against random
  batches of 16: 10 of 872 labels flip and logits move by up to 0.72 (AVX-512 VNNI machine).
* ``per-row`` (default): ``quantize_int8_per_row`` below. One scale per row of the activation
  matrix, i.e. per token, from that token's own values: no row sees another, so the output is
  the same alone and batched (0 flips, logits identical to the last bit on the same machine),
  and the finer scale is at least as accurate (SST-2 student 87.04 vs 86.47; all-MiniLM-L6-v2
  int8-vs-fp32 cosine mean 0.995 / min 0.983 vs 0.990 / 0.956). It is built from
  ``QuantizeLinear`` per axis and ONNX Runtime's ``MatMulIntegerToFloat``, the row scales
  applied by one ``Mul``. The cost is the passes over the activations and outputs that ORT's
  fused ``DynamicQuantizeMatMul`` does not make (row max/min, ``QuantizeLinear``, the row-scale
  ``Mul``, a bias ``Add`` ORT no longer fuses). Measured with ``distilserve eval
  --speed-rounds`` on a 2-core machine at load average 10 (ratios within one run only): the
  SST-2 student 0.95x per-tensor's speed, all-MiniLM-L6-v2 on STS-B 0.74x; ORT's per-op kernel
  time for MiniLM at one thread 0.89x. Rerun on a quiet machine before relying on a figure.

The SST-2 student's figures come from its shipped int8 graph dequantized back to fp32 (its
checkpoint was not at hand), then quantized each way.

Rejected, measured with a one-off script (one ORT thread, the same dequantized student, SST-2
dev alone vs random batches of 16, speed against the shipped bundle in the same run): static
activation scales calibrated
on 512 SST-2 train sentences (ORT ``quantize_static``, MinMax or 99.999th percentile, QDQ or
QOperator) are batch invariant and 1.0-1.07x as fast, but lose 0.6-1.2 accuracy points
(85.3-85.9 vs 86.5); weight-only ``MatMulNBits`` with 8 bits (block 32 or 128,
``accuracy_level`` 0 or 4) keeps accuracy but runs at 0.33-0.52x, and block 128 with
``accuracy_level`` 4 is not invariant (single rows take another kernel: logits move by 0.018).

Fusing before quantizing (``--optimize``) is optional and off by default. ONNX Runtime fuses
GELU and layer normalization itself when it loads a graph, int8 or not; what ahead-of-time
fusion adds for an int8 graph is a fused ``QAttention``, since the attention pattern no longer
matches ORT's load-time fusion once its MatMuls are quantized. Measured on all-MiniLM-L6-v2
with ``scripts/bench_int8_fusion.py`` (per-channel int8, AVX512-VNNI, one intra-op thread, CPU
time per batch of STS-B dev sentences, median of 15 interleaved rounds): fused 1.18 / 8.93 /
47.0 ms vs unfused 1.24 / 8.15 / 40.9 ms for batches of 1 / 8 / 32. Fusion wins about 5% for
single rows and loses 10-15% on the batches a loaded server runs, at the same accuracy (STS-B
dev Spearman 86.61 vs 86.62, fp32 86.72), so it is not the default.

``DefaultTensorType`` tells the quantizer to assume float for the contrib ops of a fused graph
whose output types shape inference cannot derive; without it quantization of a fused graph
fails (as it does through optimum's ``ORTQuantizer``).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distilserve.models.export.isa import QuantScheme

logger = logging.getLogger(__name__)


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextmanager
def _quiet_onnxruntime_tools() -> Iterator[None]:
    """Mute the per-node INFO chatter of ONNX Runtime's fusion and quantization tools.

    They log through the root logger and through loggers named after their own modules
    ("fusion_base", "onnx_model"...), hundreds of lines per model; the export reports what
    matters itself. Warnings still pass, except the quantizer's advice to run its shape
    pre-processing, which does not apply to dynamic quantization of transformer graphs.
    """
    root = logging.getLogger()
    nag = _DropMessages("Please consider to run pre-processing")
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    root.addFilter(nag)
    try:
        yield
    finally:
        root.removeFilter(nag)
        logging.disable(previous)


def fuse_transformer_graph(source: Path, target: Path, *, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Fuse attention/LayerNorm/GELU patterns of a BERT-family fp32 graph; returns fused op counts.

    The ``bert`` fusion rules also match DistilBERT, RoBERTa and MiniLM graphs; parts they do
    not match are left as they are, so the result is always a valid graph (parity is checked
    by the caller all the same).
    """
    from onnxruntime.transformers import optimizer

    # opt_level 0: the Python fusions only. Higher levels also run ONNX Runtime's own graph
    # optimizer, which the serving session repeats anyway and which can bake in
    # machine-specific layouts.
    with _quiet_onnxruntime_tools():
        model = optimizer.optimize_model(
            str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
        )
        model.save_model_to_file(str(target))
        stats = model.get_fused_operator_statistics()
    return {name: int(count) for name, count in stats.items() if count}


# The ops dynamic quantization turns into integer ops: the only ones worth keeping in fp32.
QUANTIZABLE_OPS = ("MatMul", "Gemm")


def nodes_matching(model_path: Path, patterns: Sequence[str]) -> list[str]:
    """Names of the graph's MatMul/Gemm nodes that match any of the glob ``patterns``.

    Mixed precision by name: ``*qa_outputs*`` is a reader's span head, ``*layer.0/*`` a first
    layer's projections (optimum names nodes after the module path, e.g.
    ``/bert/encoder/layer.0/intermediate/dense/MatMul``). A pattern that matches nothing is an
    error, not a silent full-int8 export.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    names = [node.name for node in model.graph.node if node.op_type in QUANTIZABLE_OPS]
    chosen: list[str] = []
    for pattern in patterns:
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            examples = ", ".join(names[:3])
            raise ValueError(
                f"--keep-fp32 {pattern!r} matches no MatMul/Gemm node (names look like: {examples})"
            )
        chosen.extend(name for name in matched if name not in chosen)
    return chosen


def quantize_int8(
    source: Path,
    target: Path,
    scheme: QuantScheme,
    *,
    per_channel: bool,
    nodes_to_keep_fp32: Sequence[str] = (),
) -> None:
    """Dynamic int8 quantization: weights int8 once, activations uint8 per batch at run time.

    ``nodes_to_keep_fp32`` stay float (mixed precision), where int8 costs the most accuracy.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_onnxruntime_tools():
        quantize_dynamic(
            source,
            target,
            per_channel=per_channel,
            reduce_range=scheme.reduce_range,
            weight_type=QuantType[scheme.weight_type],
            # The quantizer first rewrites each Gemm as a MatMul named "<gemm>_MatMul" (and an
            # Add), and matches the exclusions against the rewritten graph: name both.
            # (a name that was a MatMul already matches nothing more).
            nodes_to_exclude=[*nodes_to_keep_fp32, *(f"{name}_MatMul" for name in nodes_to_keep_fp32)],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )


def quantize_int8_per_row(
    source: Path,
    target: Path,
    scheme: QuantScheme,
    *,
    per_channel: bool,
    nodes_to_keep_fp32: Sequence[str] = (),
) -> int:
    """Per-row int8 (see the module docstring); returns how many MatMul nodes became int8.

    The embedding tables (``Gather``) are quantized weight-only, as ``quantize_dynamic`` does,
    which is batch invariant too. Weights take the scheme's type (s8, or u8 with zero point 128
    for AVX2's u8 x u8 kernel); activations are u8 with zero point 128, symmetric, scale
    ``max|row| / 127``.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    gathers_done = target.with_name(target.stem + ".gather.onnx")
    with _quiet_onnxruntime_tools():
        quantize_dynamic(
            source,
            gathers_done,
            op_types_to_quantize=["Gather"],
            weight_type=QuantType[scheme.weight_type],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    model = onnx.load(str(gathers_done))
    gathers_done.unlink()
    rewriter = _PerRowRewriter(
        model,
        scheme,
        per_channel=per_channel,
        keep_fp32=frozenset(
            # quantize_dynamic (the Gather step) has rewritten each Gemm as "<gemm>_MatMul" + Add.
            [*nodes_to_keep_fp32, *(f"{name}_MatMul" for name in nodes_to_keep_fp32)]
        ),
    )
    count = rewriter.rewrite()
    onnx.save(model, str(target))
    return count


class _PerRowRewriter:
    """Rewrites each MatMul with a constant 2-D weight into the per-row int8 pattern::

        x2 = Reshape(x, [-1, K])
        scale = max(ReduceMax(x2), -ReduceMin(x2), eps) / 127           # [M, 1], per row
        q = QuantizeLinear(x2, scale as [M], zero point 128, axis 0)    # u8, symmetric
        y2 = MatMulIntegerToFloat(q, w_int8, 1, w_scale, 128, w_zero_point) * scale   # [M, N]
        y = Reshape(y2, shape(x)[:-1] + [N])

    Gemms are MatMul + Add by then: the Gather step's ``quantize_dynamic`` rewrites them.
    A fused graph's (``--optimize``) ``Attention`` nodes hold their query/key/value weights
    inside and stay fp32 here (per-tensor scales would make them ``QAttention``): with per-row
    scales, fusion quantizes fewer projections.

    The activation side is built once per input tensor and shared by its consumers (a layer's
    query, key and value projections read the same tensor).
    """

    def __init__(
        self, model: Any, scheme: QuantScheme, *, per_channel: bool, keep_fp32: frozenset[str]
    ) -> None:
        self.model = model
        self.graph = model.graph
        self.scheme = scheme
        self.per_channel = per_channel
        self.keep_fp32 = keep_fp32
        self.opset = next(
            (entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0
        )
        if self.opset < 13:
            raise ValueError(
                f"per-row int8 needs ONNX opset 13 or later (per-axis QuantizeLinear); the graph has "
                f"{self.opset}: export with --opset 13 or higher, or --activation-scales per-tensor"
            )
        self.initializers = {tensor.name: tensor for tensor in self.graph.initializer}
        self.new_initializers: list[Any] = []
        self.replaced_weights: set[str] = set()
        self.quantized_inputs: dict[str, str] = {}
        self.unit_scale = self.constant("perrow_unit_scale", 1.0, "float32")

    def constant(self, name: str, value: Any, dtype: Any) -> str:
        import numpy as np
        from onnx import numpy_helper

        self.new_initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, node: Any) -> Any | None:
        """The node's constant weight as a float [K, N] array, or None if it is not rewritten."""
        import numpy as np
        from onnx import numpy_helper

        if node.name in self.keep_fp32 or len(node.input) < 2 or node.input[1] not in self.initializers:
            return None
        weight = numpy_helper.to_array(self.initializers[node.input[1]]).astype(np.float32)
        if weight.ndim != 2:
            return None
        return weight

    def rewrite(self) -> int:
        from onnx import helper

        nodes: list[Any] = []
        count = 0
        for node in self.graph.node:
            weight = self.weight(node) if node.op_type == "MatMul" else None
            if weight is None:
                nodes.append(node)
                continue
            nodes.extend(self.per_row_nodes(node, weight))
            count += 1
        # Weights still read by a node left in fp32 (shared, or kept) stay.
        still_read = {name for node in nodes for name in node.input}
        kept = [
            tensor
            for tensor in self.graph.initializer
            if tensor.name not in self.replaced_weights or tensor.name in still_read
        ]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept + self.new_initializers)
        if count and not any(entry.domain == "com.microsoft" for entry in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        return count

    def activation_nodes(self, source: str, width: int) -> tuple[list[Any], str]:
        """Nodes quantizing ``source`` per row, once per tensor; returns them and their prefix."""
        import numpy as np
        from onnx import helper, numpy_helper

        prefix = f"{source}_perrow"
        if source in self.quantized_inputs:
            return [], self.quantized_inputs[source]
        self.quantized_inputs[source] = prefix
        flat = self.constant(f"{prefix}_flat_shape", [-1, width], np.int64)
        epsilon = self.constant(f"{prefix}_epsilon", 1e-12, np.float32)
        levels = self.constant(f"{prefix}_levels", 127.0, np.float32)
        to_vector = self.constant(f"{prefix}_vector_shape", [-1], np.int64)
        starts = self.constant(f"{prefix}_lead_start", [0], np.int64)
        ends = self.constant(f"{prefix}_lead_end", [-1], np.int64)
        if self.opset >= 18:
            axes = [self.constant(f"{prefix}_axes", [1], np.int64)]
            reduce: dict[str, Any] = {"keepdims": 1}
        else:
            axes = []
            reduce = {"keepdims": 1, "axes": [1]}
        zero_point_value = numpy_helper.from_array(np.array([ACTIVATION_ZERO_POINT], dtype=np.uint8))
        # max|x| as max(max x, -min x): two reductions that only read the rows, where Abs would
        # also write a copy of them.
        nodes = [
            helper.make_node("Reshape", [source, flat], [f"{prefix}_rows"]),
            helper.make_node("ReduceMax", [f"{prefix}_rows", *axes], [f"{prefix}_high"], **reduce),
            helper.make_node("ReduceMin", [f"{prefix}_rows", *axes], [f"{prefix}_low"], **reduce),
            helper.make_node("Neg", [f"{prefix}_low"], [f"{prefix}_minus_low"]),
            helper.make_node(
                "Max", [f"{prefix}_high", f"{prefix}_minus_low", epsilon], [f"{prefix}_max_safe"]
            ),
            helper.make_node("Div", [f"{prefix}_max_safe", levels], [f"{prefix}_scale"]),
            helper.make_node("Reshape", [f"{prefix}_scale", to_vector], [f"{prefix}_scale_vector"]),
            helper.make_node("Shape", [f"{prefix}_scale_vector"], [f"{prefix}_row_count"]),
            helper.make_node(
                "ConstantOfShape", [f"{prefix}_row_count"], [f"{prefix}_zero_point"], value=zero_point_value
            ),
            helper.make_node(
                "QuantizeLinear",
                [f"{prefix}_rows", f"{prefix}_scale_vector", f"{prefix}_zero_point"],
                [f"{prefix}_quantized"],
                axis=0,
            ),
            helper.make_node("Shape", [source], [f"{prefix}_shape"]),
            helper.make_node("Slice", [f"{prefix}_shape", starts, ends], [f"{prefix}_lead_dims"]),
        ]
        return nodes, prefix

    def per_row_nodes(self, node: Any, weight: Any) -> list[Any]:
        import numpy as np
        from onnx import helper

        width, outputs = weight.shape
        nodes, prefix = self.activation_nodes(node.input[0], width)
        limit = 63.0 if self.scheme.reduce_range else 127.0
        magnitude = np.abs(weight).max(axis=0) if self.per_channel else np.full(outputs, np.abs(weight).max())
        weight_scale = (np.maximum(magnitude, 1e-12) / limit).astype(np.float32)
        levels = np.clip(np.round(weight / weight_scale), -limit, limit)
        name = node.name or node.output[0]
        weight_name = f"{name}_weight_int8"
        if self.scheme.weight_type == "QUInt8":
            self.constant(weight_name, levels + 128, np.uint8)
            weight_zero_point = self.constant(f"{name}_weight_zero_point", 128, np.uint8)
        else:
            self.constant(weight_name, levels, np.int8)
            weight_zero_point = self.constant(f"{name}_weight_zero_point", 0, np.int8)
        self.constant(f"{name}_weight_scale", weight_scale, np.float32)
        self.constant(f"{name}_out_width", [outputs], np.int64)
        activation_zero_point = self.constant(
            f"{name}_activation_zero_point", ACTIVATION_ZERO_POINT, np.uint8
        )
        self.replaced_weights.add(node.input[1])
        product = f"{name}_perrow_output"
        # MatMulIntegerToFloat (ONNX Runtime's contrib op) applies the weight scales in the GEMM's
        # output pass; the row scales, which it cannot take, follow as one Mul.
        nodes += [
            helper.make_node(
                "MatMulIntegerToFloat",
                [
                    f"{prefix}_quantized",
                    weight_name,
                    self.unit_scale,
                    f"{name}_weight_scale",
                    activation_zero_point,
                    weight_zero_point,
                ],
                [f"{product}_weight_scaled"],
                name=f"{name}_perrow",
                domain="com.microsoft",
            ),
            helper.make_node("Mul", [f"{product}_weight_scaled", f"{prefix}_scale"], [f"{product}_rows"]),
            helper.make_node(
                "Concat", [f"{prefix}_lead_dims", f"{name}_out_width"], [f"{product}_shape"], axis=0
            ),
        ]
        nodes.append(helper.make_node("Reshape", [f"{product}_rows", f"{product}_shape"], list(node.output)))
        return nodes


# The activation's zero point: symmetric scales centred in u8, the type every x86 and arm64
# int8 kernel of ONNX Runtime takes for activations.
ACTIVATION_ZERO_POINT = 128
