"""infinity-emb (michaelfeil/infinity) as the embedding baseline, from its own virtual environment.

It is installed beside the project, never into it (its pins differ from ours)::

    python3 -m venv .bench-venvs/infinity
    .bench-venvs/infinity/bin/pip install "torch==2.13.0"      # the local CPU wheel, not a CUDA build
    .bench-venvs/infinity/bin/pip install "infinity-emb[server,optimum]==0.0.78"

Its ``optimum`` engine runs an ONNX file of the model folder with ONNX Runtime; on a CPU it
prefers a file whose name contains ``quantize`` (the layout of the hub's optimum repos, e.g.
``model_quantized.onnx``). Two shims make it run offline on a local folder:

* ``get_onnx_files`` returns the absolute path it globbed, which optimum then joins to the
  folder again and cannot find; started *inside* the folder with ``--model-id .``, the glob
  yields bare file names and the lookup works.
* ``HF_HUB_OFFLINE=1`` and a private ``HF_HOME``, so nothing reaches for the hub and its
  optimisation cache stays in the benchmark's folder.

Two int8 graphs can be served (``--infinity-graphs``):

* ``optimum``: what an infinity user gets from optimum: the fp32 ONNX export quantized with
  ``ORTQuantizer`` and ``AutoQuantizationConfig.avx512_vnni(is_static=False)`` (per-tensor, the
  CLI's default). infinity then tries to optimise it with ``ORTOptimizer``; with optimum 2.1 that
  step fails (``OptimizationConfig`` lost its ``optimize_with_onnxruntime_only`` argument) and
  infinity serves the graph unoptimised, as its log says.
* ``distilserve``: distilserve's own bundle graph (fused, per-channel int8), so that the two
  servers run the very same model and only the serving stacks differ.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from distilserve.bench.servers import LOOPBACK, ManagedServer, free_port
from distilserve.models.bundle import MODEL_NAME

InfinityGraph = Literal["optimum", "distilserve"]
QUANTIZED_NAME = "model_quantized.onnx"
# Files of a checkpoint folder that infinity's tokenizer and config loading need.
CHECKPOINT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)

# Run with the infinity venv's Python: export to ONNX and quantize the way optimum users do.
_OPTIMUM_QUANTIZE = """
import sys
from pathlib import Path
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
from transformers import AutoTokenizer

source, output = sys.argv[1], Path(sys.argv[2])
ORTModelForFeatureExtraction.from_pretrained(source, export=True).save_pretrained(output)
AutoTokenizer.from_pretrained(source).save_pretrained(output)
quantizer = ORTQuantizer.from_pretrained(output, file_name="model.onnx")
quantizer.quantize(save_dir=output, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False))
# Only the int8 file stays, so there is no doubt about which one infinity serves.
(output / "model.onnx").unlink()
"""


class InfinityUnavailableError(RuntimeError):
    """The infinity venv is missing or broken; the message says how to install it."""


def infinity_executable(venv: Path) -> Path:
    executable = venv / "bin" / "infinity_emb"
    if not executable.is_file():
        raise InfinityUnavailableError(
            f"{executable} not found. Install infinity-emb in its own venv:\n"
            f"  python3 -m venv {venv}\n"
            f'  {venv}/bin/pip install "torch==2.13.0"\n'
            f'  {venv}/bin/pip install "infinity-emb[server,optimum]==0.0.78"'
        )
    return executable


def prepare_model(graph: InfinityGraph, checkpoint: Path, bundle: Path, venv: Path, work_dir: Path) -> Path:
    """A model folder infinity's optimum engine serves offline (built once, then reused)."""
    folder = work_dir / f"minilm-{graph}"
    if (folder / QUANTIZED_NAME).is_file():
        return folder
    staging = work_dir / f".minilm-{graph}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if graph == "optimum":
        result = subprocess.run(
            [str(venv / "bin" / "python"), "-c", _OPTIMUM_QUANTIZE, str(checkpoint), str(staging)],
            capture_output=True,
            text=True,
            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
            check=False,
        )
        if result.returncode != 0:
            raise InfinityUnavailableError(f"optimum int8 export failed:\n{result.stderr[-3000:]}")
    else:
        for name in CHECKPOINT_FILES:
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, staging / name)
        shutil.copy2(bundle / MODEL_NAME, staging / QUANTIZED_NAME)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def infinity_server(
    model_folder: Path, venv: Path, log_dir: Path, *, served_name: str, hf_home: Path, batch_size: int = 32
) -> ManagedServer:
    port = free_port()
    argv = [
        str(infinity_executable(venv)),
        "v2",
        "--model-id",
        ".",
        "--served-model-name",
        served_name,
        "--engine",
        "optimum",
        "--device",
        "cpu",
        "--pooling-method",
        "mean",
        "--batch-size",
        str(batch_size),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(hf_home),
        INFINITY_ANONYMOUS_USAGE_STATS="0",
        DO_NOT_TRACK="1",
    )
    return ManagedServer(
        f"infinity ({model_folder.name})",
        argv,
        port=port,
        ready_path="/health",
        log_path=log_dir / f"infinity-{model_folder.name}.log",
        env=env,
        cwd=model_folder,
    )
