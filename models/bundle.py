"""The model bundle: one self-describing folder per exported model.

Layout::

    BUNDLE/
      distilserve.json   the manifest (this module's ``Manifest``)
      model.onnx         the graph that is served (int8 unless exported with --quantize none)
      tokenizer.json     a `tokenizers` fast tokenizer

The manifest records what the runtime needs to serve the model without torch or transformers
(task, labels, limits, ONNX input names, pooling), how it was made (source, quantization,
library versions) and the proof that it still agrees with the original (parity results).
It also holds the sha256 of every other file, so a changed byte is caught at load time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distilserve.models.errors import BundleError

FORMAT_VERSION = 1
MANIFEST_NAME = "distilserve.json"
MODEL_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"
# The OpenVINO form (optional, ``export --openvino``): an IR beside model.onnx.
OPENVINO_MODEL_NAME = "openvino_model.xml"
OPENVINO_WEIGHTS_NAME = "openvino_model.bin"

# The tasks a manifest may name: the bundle format's vocabulary. Each has its declaration
# (processor, export head, samples, agreement metrics) in ``models/tasks/<task>.py``, registered
# once in ``models/tasks/__init__.py`` (docs/architecture.md, "Adding a task").
Task = Literal["text-classification", "question-answering", "feature-extraction", "rerank"]
TASKS: tuple[Task, ...] = get_args(Task)
ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]
Pooling = Literal["mean", "cls"]
# How the graph takes a batch: "padded" rows (one sequence each, 2-D attention mask), or
# "packed" rows (several sequences each, block-diagonal 3-D mask and position ids that restart
# per sequence: ``distilserve.models.packing``; ``export --graph-form``).
GraphForm = Literal["padded", "packed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuantizationInfo(_Strict):
    """How the served graph was quantized. ``mode == "none"`` means the fp32 graph is served."""

    mode: Literal["int8", "none"]
    isa: str | None = None
    per_channel: bool = False
    weight_type: str | None = None
    activation_type: str | None = None
    reduce_range: bool = False
    optimized_graph: bool = False
    # What one int8 activation scale covers (``export --activation-scales``): "per-row" (each
    # token its own scale: a row's result does not depend on its batch) or "per-tensor" (ONNX
    # Runtime's dynamic quantization: one scale per batch). None for fp32 graphs and for int8
    # bundles older than this field, which are all per-tensor.
    activation_scales: Literal["per-row", "per-tensor"] | None = None
    # Whether a row's output is the same alone and in any batch (fp32 and per-row int8 are).
    batch_invariant: bool | None = None
    # Why the export chose this scheme, in words (the evidence is in models.export.quantize).
    scheme_reason: str | None = None
    # MatMul/Gemm nodes left in fp32 in an int8 graph (mixed precision, ``export --keep-fp32``).
    fp32_nodes: list[str] = []
    # Sizes of the served graph and of the fp32 graph it was made from (which an int8 bundle
    # does not contain): the export's evidence that int8 shrank the model.
    model_bytes: int | None = None
    fp32_bytes: int | None = None


class OpenVinoForm(_Strict):
    """The bundle's OpenVINO IR (``models.engines.openvino``) and how it was made. Its checks
    (agreement with fp32, batch invariance) are in the manifest's ``parity`` list."""

    model: str = OPENVINO_MODEL_NAME
    weights: str = OPENVINO_WEIGHTS_NAME
    # int8: NNCF static post-training quantization; fp32: the graph as is (run in bf16 where
    # the CPU has it), its weights stored as fp16.
    precision: Literal["int8", "fp32"]
    calibration_samples: int | None = None
    calibration_source: str | None = None
    batch_invariant: bool | None = None
    model_bytes: int | None = None
    versions: dict[str, str] = Field(default_factory=dict)


class ParityCheck(_Strict):
    """One comparison between two implementations of the model on sample inputs."""

    reference: str
    candidate: str
    samples: int
    metrics: dict[str, float]
    thresholds: dict[str, float]
    passed: bool


class SourceInfo(_Strict):
    """Where the model came from: a local folder or a hub id, and a hash of its weights."""

    id: str
    revision: str | None = None
    sha256: str


class Manifest(_Strict):
    format_version: int
    task: Task
    model_type: str
    labels: dict[int, str] = Field(default_factory=dict)
    problem_type: ProblemType | None = None
    max_length: int = Field(gt=1)
    input_names: list[str]
    output_names: list[str]
    graph_form: GraphForm = "padded"
    hidden_size: int | None = None
    num_parameters: int | None = None
    pooling: Pooling | None = None
    normalize: bool = False
    quantization: QuantizationInfo
    openvino: OpenVinoForm | None = None
    parity: list[ParityCheck] = Field(default_factory=list)
    source: SourceInfo
    versions: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str]
    created_at: str

    def label_for(self, index: int) -> str:
        return self.labels.get(index, f"LABEL_{index}")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    """sha256 of each named file in ``folder`` (the manifest's ``files`` field)."""
    return {name: sha256_file(folder / name) for name in sorted(names)}


def read_manifest(bundle_dir: Path | str) -> Manifest:
    """Read and validate the manifest alone, without hashing the other files."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(bundle_dir, "bundle folder does not exist")
    manifest_path = bundle_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(manifest_path, "manifest is missing: this folder is not a distilserve bundle")
    try:
        raw: Any = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(manifest_path, f"manifest is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(manifest_path, "manifest is not a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            manifest_path,
            f"unsupported bundle format version {version!r}; this distilserve reads version "
            f"{FORMAT_VERSION}: re-export the model with this release",
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BundleError(manifest_path, f"invalid manifest field {where!r}: {first['msg']}") from exc
    for name in (MANIFEST_NAME, *manifest.files):
        _check_inside(bundle_dir, name)
    return manifest


def _check_inside(bundle_dir: Path, name: str) -> None:
    """A bundle is one folder: a listed name that climbs out of it ('../x', an absolute path) or a
    link that points out of it would load a file the bundle does not hold, hashes or not."""
    root = bundle_dir.resolve()
    path = bundle_dir / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(root):
        raise BundleError(
            path, "lies outside the bundle folder (a '..' or absolute name, or a link out of it)"
        )


def load_manifest(bundle_dir: Path | str, *, verify_hashes: bool = True) -> Manifest:
    """Read the manifest and check that every file it lists is present and unchanged."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    for required in (MODEL_NAME, TOKENIZER_NAME):
        if required not in manifest.files:
            raise BundleError(bundle_dir / MANIFEST_NAME, f"manifest does not list {required}")
    for name, expected in manifest.files.items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(path, "file listed in the manifest is missing")
        if verify_hashes and sha256_file(path) != expected:
            raise BundleError(
                path, "sha256 does not match the manifest: the file is corrupted or was changed"
            )
    return manifest


@contextmanager
def atomic_bundle_dir(output: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``output``; rename it to ``output`` only on success.

    A failed or interrupted export removes the temporary folder, so ``output`` is either the
    complete new bundle, or (with ``overwrite``) the previous one, or absent: never half-written.
    """
    output = Path(output).resolve()
    if output.exists() and not overwrite:
        raise BundleError(output, "output already exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    # mkdtemp makes the folder private (0700); a bundle is read by other users (a container's
    # non-root user), so give it the permissions a plain mkdir would have under this umask.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        yield staging
        if output.exists():
            # Move the old bundle aside first so the swap leaves no window without a bundle
            # that is worse than a missing one.
            retired = output.with_name(f".{output.name}.old-{os.getpid()}")
            os.replace(output, retired)
            os.replace(staging, output)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
