"""Graph fusion and dynamic int8 quantization with ONNX Runtime's tools.

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
