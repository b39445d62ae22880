"""A loaded bundle, ready to score: tokenizer, engine (ONNX Runtime or OpenVINO) and task processor.

This is the library API for offline batch scoring (no HTTP, no torch, no transformers)::

    from distilserve.models import load_model
    model = load_model("bundles/minilm")
    vectors = model.predict(["a sentence", "another one"])

The server's dynamic batcher uses the same pieces: ``prepare`` per item, ``forward`` per batch,
``finish`` per item.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distilserve.models.batching import (
    OFFLINE_BATCH_LIMITS,
    BatchLimits,
    EncodedRow,
    assemble_batch,
    plan_batches,
)
from distilserve.models.bundle import MODEL_NAME, TOKENIZER_NAME, Manifest, load_manifest
from distilserve.models.engines.base import Engine, EngineChoice
from distilserve.models.engines.loading import open_engine
from distilserve.models.engines.select import EngineSelection
from distilserve.models.errors import BundleError, InputError
from distilserve.models.export.isa import Isa, detect_isa
from distilserve.models.packing import SEGMENT_STARTS, is_packed_graph, run_packed
from distilserve.models.session import SessionOptions
from distilserve.models.tasks import Prepared, TaskProcessor, processor_for
from distilserve.models.tokenization import ThreadSafeTokenizer

logger = logging.getLogger(__name__)


class ModelRuntime:
    """Everything needed to run one bundle."""

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        session: Engine,
        tokenizer: ThreadSafeTokenizer,
        selection: EngineSelection | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        # The engine that runs the graph (``models.engines``); named ``session`` since ONNX
        # Runtime's session was the only one.
        self.session = session
        self.selection = selection or EngineSelection(
            session.name, session.precision, session.name, "given to ModelRuntime"
        )
        self.tokenizer = tokenizer
        self.processor: TaskProcessor[Any, Any, Any] = processor_for(manifest, tokenizer)
        missing = [name for name in session.input_names if name not in manifest.input_names]
        if missing:
            raise BundleError(
                bundle_dir / MODEL_NAME, f"graph takes inputs {missing} the manifest does not list"
            )
        # A packed graph (models.packing) takes several sequences per row; a classifier's packed
        # graph also takes each sequence's first token and answers one row per sequence. The
        # engine's own graph decides: a packed bundle's OpenVINO form is a padded graph.
        self.packed = is_packed_graph(session.input_names)
        self.per_sequence = SEGMENT_STARTS in session.input_names

    def prepare(self, item: Any, params: Any = None) -> Prepared:
        return self.processor.prepare(item, self.processor.default_params() if params is None else params)

    def prepare_each(self, items: Sequence[Any], params: Any = None) -> list[Prepared | InputError]:
        """``prepare`` over several items in one tokenizer call where the task allows it; an
        item the model cannot take gets its ``InputError`` in its place instead of raising."""
        return self.processor.prepare_each(
            items, self.processor.default_params() if params is None else params
        )

    def forward(self, rows: Sequence[EncodedRow]) -> Sequence[Any]:
        """Run one batch of rows (padded, or packed for a packed graph); one output per row, in order."""
        if self.packed:
            outputs, batch = run_packed(
                self.session.run,
                rows,
                self.tokenizer.pad_token_id,
                self.manifest.output_names,
                per_sequence=self.per_sequence,
            )
        else:
            batch = assemble_batch(rows, self.tokenizer.pad_token_id)
            outputs = self.session.run(batch.feed, self.manifest.output_names)
        return self.processor.split_outputs(outputs, batch)

    def release_memory(self) -> None:
        """Give back the memory earlier batches left the engine holding (``Engine.release_memory``)."""
        self.session.release_memory()

    def finish(self, prepared: Prepared, row_outputs: Sequence[Any], params: Any = None) -> Any:
        return self.processor.finish(
            prepared, row_outputs, self.processor.default_params() if params is None else params
        )

    def predict(
        self,
        items: Sequence[Any],
        params: Any = None,
        *,
        max_batch_size: int = OFFLINE_BATCH_LIMITS.max_batch_size,
        max_batch_tokens: int = OFFLINE_BATCH_LIMITS.max_batch_tokens,
    ) -> list[Any]:
        """Score many items offline, in length-grouped batches; results come back in input order."""
        params = self.processor.default_params() if params is None else params
        prepared = [self.processor.prepare(item, params) for item in items]
        rows: list[EncodedRow] = []
        owners: list[int] = []
        for item_index, item in enumerate(prepared):
            rows.extend(item.rows)
            owners.extend([item_index] * len(item.rows))
        row_outputs: list[Any] = [None] * len(rows)
        limits = BatchLimits(max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)
        plan = plan_batches([len(row) for row in rows], limits)
        for batch_indices in plan:
            outputs = self.forward([rows[index] for index in batch_indices])
            for index, output in zip(batch_indices, outputs, strict=True):
                row_outputs[index] = output
        per_item: list[list[Any]] = [[] for _ in prepared]
        for owner, output in zip(owners, row_outputs, strict=True):
            per_item[owner].append(output)
        return [
            self.processor.finish(item, outputs, params)
            for item, outputs in zip(prepared, per_item, strict=True)
        ]


def load_model(
    bundle_dir: Path | str,
    session_options: SessionOptions | None = None,
    *,
    verify_hashes: bool = True,
    detect_cpu_isa: Callable[[], Isa] = detect_isa,
    engine: EngineChoice = "auto",
) -> ModelRuntime:
    """Load and verify a bundle. Raises ``BundleError`` naming the file and the problem.

    ``engine`` picks what runs the graph: ``auto`` times ONNX Runtime and, where the bundle has
    an OpenVINO form and OpenVINO is installed, OpenVINO, and keeps the faster one that agrees
    (``models.engines.select``); ``runtime.selection`` says which and why.

    An int8 bundle quantized for another kind of CPU has its weights refitted for this one as
    it loads, without loss (``models.engines.int8_weights``; ``runtime.selection.weights`` says
    so); what cannot be refitted loads as it is, with a warning that names the fix.
    ``detect_cpu_isa`` reads this machine's ISA (tests pass a fake one).
    """
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir, verify_hashes=verify_hashes)
    try:
        tokenizer = ThreadSafeTokenizer.from_file(bundle_dir / TOKENIZER_NAME)
    except Exception as exc:  # tokenizers raises plain Exception subclasses for bad JSON
        raise BundleError(bundle_dir / TOKENIZER_NAME, f"cannot load tokenizer ({exc})") from exc
    session, selection = open_engine(
        bundle_dir,
        manifest,
        tokenizer,
        session_options or SessionOptions(),
        engine,
        cpu_isa=detect_cpu_isa(),
    )
    logger.info(
        "model loaded on %s %s (%s)",
        selection.engine,
        selection.precision,
        selection.reason,
        extra={
            "bundle": str(bundle_dir),
            "task": manifest.task,
            "quantization": manifest.quantization.mode,
            "engine": selection.engine,
        },
    )
    return ModelRuntime(bundle_dir, manifest, session, tokenizer, selection)
