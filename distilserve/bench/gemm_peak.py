"""This machine's int8 GEMM peak through ONNX Runtime, and the useful FLOPs of an encoder.

``measure_gemm_peak`` times a one-node ``MatMulInteger`` graph (uint8 activations x int8
weights, the pair dynamic quantization emits) at a few transformer-like shapes, with as many
intra-op threads as the serving sessions use, and keeps the best rate: 2·M·N·K operations per
second. The fp32 ``MatMul`` rate at the same shapes is measured beside it for context.

``EncoderFlops`` counts the *useful* operations of one unpadded sequence of L tokens from the
bundle's graph: 2·L·W for the weight matrices (W = the sum of K·N over the 2-D weights the
matrix-multiply nodes read) plus 4·L²·H per layer for the attention scores and their
weighted sum. Padding, softmax, normalisation and activations are not counted, so
``useful GOPS / peak`` is the share of the machine's int8 matmul capacity that does real work.
Pooler and classifier weights are counted per token although they run once per sequence; for
the 3-layer MiniLM student that overstates a classification sequence by under 3%.

Runs as a script too: ``python -m distilserve.bench.gemm_peak``. Needs the ``onnx`` package (in the
export extra) to build the graph.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distilserve.models.bundle import MODEL_NAME, read_manifest
from distilserve.models.session import cpu_count

# (M, K, N): rows x hidden -> hidden*4 and back, the shapes of a batch of 32 x 64 tokens.
DEFAULT_SHAPES: tuple[tuple[int, int, int], ...] = (
    (2048, 384, 1536),
    (2048, 1536, 384),
    (2048, 1024, 1024),
    (4096, 768, 3072),
)
WEIGHT_OPS = frozenset(
    {
        "MatMul",
        "MatMulInteger",
        "Gemm",
        "QAttention",
        "Attention",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "FusedMatMul",
        "QGemm",
    }
)
ATTENTION_OPS = frozenset({"Attention", "QAttention", "MultiHeadAttention"})


@dataclass
class ShapeRate:
    m: int
    k: int
    n: int
    int8_gops: float
    fp32_gflops: float


@dataclass
class GemmPeak:
    threads: int
    int8_gops: float  # best over the shapes
    fp32_gflops: float
    shapes: list[ShapeRate]


def _matmul_graph(k: int, n: int, integer: bool, seed: int = 0) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    if integer:
        weight = numpy_helper.from_array(rng.integers(-127, 128, size=(k, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("A", a_type, ["M", k])],
        [helper.make_tensor_value_info("Y", y_type, ["M", n])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _rate(session: ort.InferenceSession, feed: np.ndarray, ops: float, min_time_s: float) -> float:
    session.run(None, {"A": feed})  # warm-up: packs the weights
    timings: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < min_time_s or len(timings) < 5:
        begin = time.perf_counter()
        session.run(None, {"A": feed})
        timings.append(time.perf_counter() - begin)
    return ops / statistics.median(timings) / 1e9


def measure_gemm_peak(
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES, threads: int = 0, min_time_s: float = 1.0
) -> GemmPeak:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    rng = np.random.default_rng(1)
    rates: list[ShapeRate] = []
    for m, k, n in shapes:
        ops = 2.0 * m * n * k
        int8 = ort.InferenceSession(_matmul_graph(k, n, True), options, providers=["CPUExecutionProvider"])
        int8_rate = _rate(int8, rng.integers(0, 256, size=(m, k), dtype=np.uint8), ops, min_time_s)
        fp32 = ort.InferenceSession(_matmul_graph(k, n, False), options, providers=["CPUExecutionProvider"])
        fp32_rate = _rate(fp32, rng.standard_normal((m, k), dtype=np.float32), ops, min_time_s)
        rates.append(ShapeRate(m, k, n, int8_rate, fp32_rate))
    return GemmPeak(
        threads=threads or cpu_count(),
        int8_gops=max(rate.int8_gops for rate in rates),
        fp32_gflops=max(rate.fp32_gflops for rate in rates),
        shapes=rates,
    )


@dataclass(frozen=True)
class EncoderFlops:
    """Useful operations of an encoder as a function of one sequence's length."""

    weight_macs_per_token: int  # W: sum of K*N over the weight matrices
    layers: int
    hidden_size: int

    def per_sequence(self, length: int) -> float:
        return (
            2.0 * length * self.weight_macs_per_token + 4.0 * self.layers * length * length * self.hidden_size
        )

    @classmethod
    def from_bundle(cls, bundle: Path) -> EncoderFlops:
        import onnx

        manifest = read_manifest(bundle)
        model = onnx.load(str(bundle / MODEL_NAME), load_external_data=False)
        shapes = {init.name: list(init.dims) for init in model.graph.initializer}
        weight_macs = 0
        layers = 0
        for node in model.graph.node:
            if node.op_type in ATTENTION_OPS or node.op_type == "Softmax":
                layers += 1
            if node.op_type in WEIGHT_OPS:
                for name in node.input:
                    dims = shapes.get(name)
                    if dims is not None and len(dims) == 2:
                        weight_macs += dims[0] * dims[1]
        hidden = manifest.hidden_size or 0
        return cls(weight_macs_per_token=weight_macs, layers=layers, hidden_size=hidden)


def main() -> int:
    peak = measure_gemm_peak()
    print(json.dumps(asdict(peak), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
