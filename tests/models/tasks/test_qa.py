"""Question answering: the processor gives the transformers pipeline's answers, scores and offsets.

The ONNX export is not needed: the tiny checkpoint's PyTorch model runs on the padded batch
that ``assemble_batch`` builds from the processor's rows, which is exactly what the ONNX session
receives in production. The pipeline runs the same model window by window, unpadded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distilserve.models.batching import assemble_batch
from distilserve.models.bundle import Manifest, QuantizationInfo, SourceInfo
from distilserve.models.errors import InputError
from distilserve.models.tasks.qa import Answer, QAInput, QAParams, QuestionAnsweringProcessor
from distilserve.models.tokenization import ThreadSafeTokenizer
from tests.conftest import ARCHS
from tests.tiny_models import Arch, TinyTask, corpus

# transformers 4.57's pipeline calls np.array() on a torch tensor with numpy 2's copy keyword.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SCORE_REL_TOL = 1e-4
# Scores of zero-score filler spans are exact zeros on both sides; the rest are probabilities.
SCORE_ABS_TOL = 1e-7

LONG_CONTEXT = " ".join(corpus()[:24])
SHORT_ITEMS = [
    QAInput("What was the film?", "The film was wonderful from start to finish."),
    QAInput("Who was boring?", "A waiter was boring, mediocre. The actor was brilliant!"),
    QAInput("where?", "The flight looked moving at the airport in Paris..."),
    # Accents and case: the normaliser strips and lowercases, the offsets must still index the text.
    QAInput("Which café?", "The CAFÉ near the hotel was charming; the café in Paris was AWFUL."),
    # Repeated words make equal answer texts in several places: their scores add up.
    QAInput("What was it?", "Boring boring BORING, slow slow, and boring again."),
    QAInput("what", "slow."),
]
LONG_ITEMS = [
    QAInput("What was excellent after 45 minutes?", LONG_CONTEXT),
    QAInput("Which soundtrack?", " ".join(corpus()[30:60])),
]

# (name, params): each runs on every item, batched together.
PARITY_CASES: list[tuple[str, QAParams]] = [
    ("defaults", QAParams()),
    ("top_k_3", QAParams(top_k=3)),
    ("top_k_5", QAParams(top_k=5)),
    ("impossible", QAParams(top_k=3, handle_impossible_answer=True)),
    ("impossible_top_1", QAParams(handle_impossible_answer=True)),
    ("short_answers", QAParams(top_k=3, max_answer_len=2)),
    ("no_word_alignment", QAParams(top_k=5, align_to_words=False)),
    ("small_windows", QAParams(top_k=5, max_seq_len=40, doc_stride=10)),
    (
        "small_windows_impossible",
        QAParams(top_k=3, max_seq_len=48, doc_stride=16, handle_impossible_answer=True),
    ),
    ("no_stride", QAParams(top_k=3, max_seq_len=32, doc_stride=0)),
    ("many_fillers", QAParams(top_k=20, max_answer_len=1)),
]


@dataclass
class QASetup:
    """A processor over a tiny checkpoint's tokenizer, its torch model, and the reference pipeline."""

    processor: QuestionAnsweringProcessor
    tokenizer: ThreadSafeTokenizer
    model: Any
    pipeline: Any


def qa_manifest(folder: Path, arch: Arch) -> Manifest:
    """The manifest an export of this checkpoint would write (fields finish and prepare use)."""
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if arch == "bert" else [])
    return Manifest(
        format_version=1,
        task="question-answering",
        model_type=arch,
        max_length=int(config["model_max_length"]),
        input_names=inputs,
        output_names=["start_logits", "end_logits"],
        quantization=QuantizationInfo(mode="none"),
        source=SourceInfo(id=str(folder), sha256="0" * 64),
        files={},
        created_at="2025-01-01T00:00:00Z",
    )


@pytest.fixture(scope="module")
def qa_setups(tiny_checkpoints: dict[tuple[Arch, TinyTask], Path]) -> dict[Arch, QASetup]:
    import torch
    from transformers import pipeline

    torch.set_num_threads(1)
    setups = {}
    for arch in ARCHS:
        folder = tiny_checkpoints[(arch, "question-answering")]
        reference = pipeline("question-answering", model=str(folder), tokenizer=str(folder), device="cpu")
        tokenizer = ThreadSafeTokenizer.from_file(folder / "tokenizer.json")
        processor = QuestionAnsweringProcessor(qa_manifest(folder, arch), tokenizer)
        setups[arch] = QASetup(processor, tokenizer, reference.model, reference)
    return setups


def run_processor(setup: QASetup, items: list[QAInput], params: QAParams) -> list[list[Answer]]:
    """prepare -> one padded batch of every item's rows -> torch model -> split_outputs -> finish."""
    import torch

    processor = setup.processor
    prepared = [processor.prepare(item, params) for item in items]
    rows = [row for item in prepared for row in item.rows]
    # Longest rows first, as a length-grouped batcher might order them: rows of one item need not
    # be adjacent or in window order inside a batch.
    order = sorted(range(len(rows)), key=lambda index: -len(rows[index]))
    batch = assemble_batch([rows[index] for index in order], setup.tokenizer.pad_token_id)
    feed = {name: torch.from_numpy(batch.feed[name]) for name in processor.manifest.input_names}
    with torch.inference_mode():
        output = setup.model(**feed)
    outputs = {"start_logits": output.start_logits.numpy(), "end_logits": output.end_logits.numpy()}
    batch_outputs = processor.split_outputs(outputs, batch)
    row_outputs: list[Any] = [None] * len(rows)
    for position, index in enumerate(order):
        row_outputs[index] = batch_outputs[position]
    results = []
    first = 0
    for item in prepared:
        results.append(processor.finish(item, row_outputs[first : first + len(item.rows)], params))
        first += len(item.rows)
    return results


def pipeline_answers(setup: QASetup, item: QAInput, params: QAParams) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {
        "top_k": params.top_k,
        "max_answer_len": params.max_answer_len,
        "handle_impossible_answer": params.handle_impossible_answer,
        "align_to_words": params.align_to_words,
    }
    if params.max_seq_len is not None:
        kwargs["max_seq_len"] = params.max_seq_len
    if params.doc_stride is not None:
        kwargs["doc_stride"] = params.doc_stride
    result = setup.pipeline(question=item.question, context=item.context, **kwargs)
    # The pipeline returns a bare dict for a single answer.
    return [result] if isinstance(result, dict) else list(result)


def assert_same_answers(got: list[Answer], expected: list[dict[str, Any]], where: str) -> None:
    assert [(a.answer, a.start, a.end) for a in got] == [
        (e["answer"], e["start"], e["end"]) for e in expected
    ], where
    for answer, reference in zip(got, expected, strict=True):
        assert answer.score == pytest.approx(reference["score"], rel=SCORE_REL_TOL, abs=SCORE_ABS_TOL), where


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("case", "params"), PARITY_CASES, ids=[name for name, _ in PARITY_CASES])
def test_matches_pipeline(qa_setups: dict[Arch, QASetup], arch: Arch, case: str, params: QAParams) -> None:
    setup = qa_setups[arch]
    items = SHORT_ITEMS + LONG_ITEMS
    results = run_processor(setup, items, params)
    for item, got in zip(items, results, strict=True):
        expected = pipeline_answers(setup, item, params)
        assert_same_answers(got, expected, f"{arch} {case}: {item.question!r}")
        assert 1 <= len(got) <= params.top_k


@pytest.mark.parametrize("arch", ARCHS)
def test_long_contexts_are_split_into_overlapping_windows(qa_setups: dict[Arch, QASetup], arch: Arch) -> None:
    processor = qa_setups[arch].processor
    item = LONG_ITEMS[0]
    default = processor.prepare(item, QAParams())
    assert len(default.rows) > 1
    # The pipeline's defaults for this model: min(128, 384) tokens, stride min(128 // 2, 128).
    assert max(len(row) for row in default.rows) == 128
    small = processor.prepare(item, QAParams(max_seq_len=40, doc_stride=10))
    assert len(small.rows) > len(default.rows)
    assert all(len(row) <= 40 for row in small.rows)
    assert small.num_tokens == sum(len(row) for row in small.rows)
    # Consecutive windows share doc_stride context tokens.
    first, second = (window.offsets[window.sequence_ids == 1] for window in small.context.windows[:2])
    assert np.array_equal(first[-10:], second[:10])


@pytest.mark.parametrize("arch", ARCHS)
def test_stride_that_cannot_fit_is_accepted_when_no_window_is_needed(
    qa_setups: dict[Arch, QASetup], arch: Arch
) -> None:
    setup = qa_setups[arch]
    question = " ".join(["which film was boring"] * 6) + "?"
    # room for the context beside this question is below the stride, but the short context fits.
    params = QAParams(top_k=3, max_seq_len=64, doc_stride=60)
    item = QAInput(question, "The film was wonderful.")
    (got,) = run_processor(setup, [item], params)
    assert_same_answers(got, pipeline_answers(setup, item, params), arch)
    with pytest.raises(InputError) as info:
        setup.processor.prepare(QAInput(question, LONG_CONTEXT), params)
    assert info.value.param == "doc_stride"


def test_split_outputs_cuts_rows_to_their_length(qa_setups: dict[Arch, QASetup]) -> None:
    processor = qa_setups["bert"].processor
    rows = (
        processor.prepare(SHORT_ITEMS[0], QAParams()).rows
        + processor.prepare(SHORT_ITEMS[1], QAParams()).rows
    )
    batch = assemble_batch(rows, 0)
    logits = np.arange(batch.padded_tokens, dtype=np.float64).reshape(len(rows), -1)
    split = processor.split_outputs({"start_logits": logits, "end_logits": -logits}, batch)
    assert [start.shape[0] for start, _ in split] == [len(row) for row in rows]
    assert all(start.dtype == np.float32 and end.dtype == np.float32 for start, end in split)
    assert np.array_equal(split[1][1], -logits[1, : len(rows[1])])


@pytest.fixture(scope="module")
def processor(qa_setups: dict[Arch, QASetup]) -> QuestionAnsweringProcessor:
    return qa_setups["distilbert"].processor


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (QAInput("", "The film was slow."), "question"),
        (QAInput("   \t", "The film was slow."), "question"),
        (QAInput("What?", ""), "context"),
        (QAInput("What?", " \n "), "context"),
        (QAInput(None, "The film was slow."), "question"),  # type: ignore[arg-type]
        (QAInput("What?", 42), "context"),  # type: ignore[arg-type]
        (QAInput(["what"], "The film was slow."), "question"),  # type: ignore[arg-type]
    ],
)
def test_rejects_invalid_text(processor: QuestionAnsweringProcessor, item: QAInput, param: str) -> None:
    with pytest.raises(InputError) as info:
        processor.prepare(item, QAParams())
    assert info.value.param == param


def test_rejects_an_item_that_is_not_a_qa_input(processor: QuestionAnsweringProcessor) -> None:
    with pytest.raises(InputError, match="question and a context"):
        processor.prepare({"question": "What?", "context": "The film."}, QAParams())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (QAParams(top_k=0), "top_k"),
        (QAParams(max_answer_len=0), "max_answer_len"),
        (QAParams(max_seq_len=129), "max_seq_len"),  # beyond the bundle's 128
        (QAParams(max_seq_len=64, doc_stride=65), "doc_stride"),
        (QAParams(doc_stride=-1), "doc_stride"),
        (QAParams(top_k="3"), "top_k"),  # type: ignore[arg-type]
        (QAParams(max_question_len=3), "question"),
        (QAParams(max_seq_len=8), "question"),  # the question leaves no room for the long context
        (QAParams(max_seq_len=32, doc_stride=30), "doc_stride"),
    ],
)
def test_rejects_impossible_parameters(
    processor: QuestionAnsweringProcessor, params: QAParams, param: str
) -> None:
    with pytest.raises(InputError) as info:
        processor.prepare(QAInput("Which film was the most boring?", LONG_CONTEXT), params)
    assert info.value.param == param


def test_module_needs_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, models.tasks.qa; "
        "bad = {'torch', 'transformers'} & set(sys.modules); "
        "sys.exit(f'imported {sorted(bad)}' if bad else 0)"
    )
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr or result.stdout
