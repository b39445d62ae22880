"""The rerank task: a one-logit cross-encoder exported, checked and scored like the other tasks.

The tiny cross-encoders are random; the pairs are the toy ones of
``tests.tiny_models.toy_relevance_pairs``. Scores are compared with PyTorch's sigmoid of the
logit, truncation with the transformers tokenizer's ``only_second`` (left or right), and
batches with rows run alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pytest

from distilserve.models import InputError, InputTooLongError, load_model
from distilserve.models.bundle import Task, load_manifest
from distilserve.models.errors import ExportError
from distilserve.models.evaluation.invariance import measure_batch_invariance
from distilserve.models.export import ExportOptions, export_bundle, infer_task
from distilserve.models.export.samples import SAMPLE_RERANK_PAIRS, read_sample_file
from distilserve.models.tasks import TASK_SPECS, RerankPair, RerankParams, RerankProcessor
from tests.tiny_models import Arch, TinyTask, toy_relevance_pairs

RerankBundles = dict[tuple[Arch, Literal["int8", "none"]], Path]
ARCHS: tuple[Arch, ...] = ("distilbert", "bert")
PAIRS = [RerankPair(query, document) for query, document in toy_relevance_pairs(48, seed=5)[0]]
LONG_DOCUMENT = " ".join(f"word{index % 10} the film was wonderful" for index in range(80))


def torch_logits(checkpoint: Path, pairs: list[RerankPair]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        batch = tokenizer(
            [pair.query for pair in pairs],
            [pair.document for pair in pairs],
            padding=True,
            truncation="only_second",
            return_tensors="pt",
        )
        return model(**batch).logits[:, 0].numpy()  # type: ignore[no-any-return]


def test_every_bundle_task_is_registered_once() -> None:
    assert set(TASK_SPECS) == set(get_args(Task))
    assert TASK_SPECS["rerank"].processor is RerankProcessor
    # A one-logit classifier and a cross-encoder share an architecture: rerank is never inferred.
    assert infer_task(["BertForSequenceClassification"]) == "text-classification"


@pytest.mark.parametrize("arch", ARCHS)
def test_export_checks_a_cross_encoder_like_a_classifier(
    tiny_rerank_bundles: RerankBundles, arch: Arch
) -> None:
    manifest = load_manifest(tiny_rerank_bundles[(arch, "int8")])
    assert manifest.task == "rerank" and manifest.labels == {} and manifest.problem_type is None
    assert manifest.output_names == ["logits"]
    assert manifest.quantization.mode == "int8" and manifest.quantization.batch_invariant
    fp32, int8 = manifest.parity
    assert (fp32.candidate, fp32.passed) == ("onnx-fp32", True) and fp32.metrics["max_abs_diff"] <= 1e-4
    assert (int8.candidate, int8.passed, int8.samples) == ("onnx-int8", True, len(SAMPLE_RERANK_PAIRS))
    assert set(int8.thresholds) == {"order_agreement", "max_probability_gap"}
    assert int8.metrics["order_agreement"] >= 0.9


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_are_the_sigmoid_of_the_pytorch_logit(
    tiny_rerank_checkpoints: dict[Arch, Path], tiny_rerank_bundles: RerankBundles, arch: Arch
) -> None:
    model = load_model(tiny_rerank_bundles[(arch, "none")])
    logits = torch_logits(tiny_rerank_checkpoints[arch], PAIRS)
    raw = np.array(model.predict(PAIRS, RerankParams(raw_scores=True)))
    np.testing.assert_allclose(raw, logits, rtol=0, atol=1e-4)
    scores = np.array(model.predict(PAIRS))
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), rtol=0, atol=1e-5)
    assert np.ptp(scores) > 0.01  # the documents are told apart, so their order means something


@pytest.mark.parametrize("direction", ["right", "left"])
def test_a_long_document_is_cut_and_the_query_kept_whole(
    tiny_rerank_checkpoints: dict[Arch, Path], tiny_rerank_bundles: RerankBundles, direction: str
) -> None:
    from transformers import AutoTokenizer

    model = load_model(tiny_rerank_bundles[("bert", "none")])
    limit = model.manifest.max_length
    query = "what about the film and the soundtrack?"
    params = RerankParams(truncation_direction=direction)  # type: ignore[arg-type]
    prepared = model.prepare(RerankPair(query, LONG_DOCUMENT), params)
    (row,) = prepared.rows
    reference = AutoTokenizer.from_pretrained(tiny_rerank_checkpoints["bert"], truncation_side=direction)
    expected = reference(query, LONG_DOCUMENT, truncation="only_second", max_length=limit)
    assert len(row) == limit and list(row.input_ids) == expected["input_ids"]
    query_ids = reference(query)["input_ids"]
    assert list(row.input_ids[: len(query_ids)]) == query_ids  # [CLS] query [SEP], whole

    with pytest.raises(InputTooLongError):
        model.prepare(RerankPair(query, LONG_DOCUMENT), RerankParams(truncate=False))
    with pytest.raises(InputError, match="leaving no room") as caught:
        model.prepare(RerankPair(LONG_DOCUMENT, "a document"))
    assert caught.value.param == "query"


def test_prepare_each_equals_prepare_one_by_one(tiny_rerank_bundles: RerankBundles) -> None:
    model = load_model(tiny_rerank_bundles[("bert", "int8")])
    items = [*PAIRS[:5], RerankPair("what?", "  "), RerankPair(LONG_DOCUMENT, "x"), PAIRS[6]]
    for params in (RerankParams(), RerankParams(truncate=False), RerankParams(truncation_direction="left")):
        each = model.prepare_each(items, params)
        assert len(each) == len(items)
        for item, result in zip(items, each, strict=True):
            try:
                alone = model.prepare(item, params)
            except InputError as exc:
                assert isinstance(result, InputError) and str(result) == str(exc)
                assert result.param == exc.param
                continue
            assert not isinstance(result, InputError)
            assert [list(row.input_ids) for row in result.rows] == [list(row.input_ids) for row in alone.rows]


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_rerank_answers_the_same_alone_and_batched(
    tiny_rerank_bundles: RerankBundles, arch: Arch
) -> None:
    model = load_model(tiny_rerank_bundles[(arch, "int8")])
    report = measure_batch_invariance(model, PAIRS, batch_size=16)
    assert report.rows == len(PAIRS) and report.max_abs_diff <= 1e-3
    planned = np.array(model.predict(PAIRS))
    alone = np.array([model.predict([pair])[0] for pair in PAIRS])
    assert np.abs(planned - alone).max() <= 1e-3


def test_the_server_asks_the_task_for_its_warmup_item_and_size(tiny_rerank_bundles: RerankBundles) -> None:
    processor = load_model(tiny_rerank_bundles[("bert", "int8")]).processor
    warmup = processor.warmup_item()
    assert isinstance(warmup, RerankPair) and processor.prepare(warmup, RerankParams()).rows
    assert processor.item_chars(RerankPair("abc", "defgh")) == 8


def test_export_refuses_a_checkpoint_with_more_than_one_logit(
    tiny_checkpoints: dict[tuple[Arch, TinyTask], Path], tmp_path: Path
) -> None:
    source = tiny_checkpoints[("bert", "text-classification")]
    with pytest.raises(ExportError, match="num_labels=1"):
        export_bundle(ExportOptions(source=str(source), output=tmp_path / "bundle", task="rerank"))
    assert not (tmp_path / "bundle").exists()


def test_sample_file_lines_are_query_tab_document(tmp_path: Path) -> None:
    path = tmp_path / "samples.txt"
    path.write_text("what?\tthis.\nno tab here\n", encoding="utf-8")
    with pytest.raises(ExportError, match="sample 2 is not 'query<TAB>document'"):
        read_sample_file(path, "rerank")
    path.write_text("what?\tthis.\n", encoding="utf-8")
    assert read_sample_file(path, "rerank").pairs == (("what?", "this."),)
