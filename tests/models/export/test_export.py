"""The export: fp32 parity with PyTorch, runtime results equal to transformers', int8 agreement,
task inference, and failures that leave nothing behind.

The bundles come from the session fixtures ``tiny_bundles`` (fp32) and ``tiny_int8_bundles``;
tests that need a differently exported bundle export one of the tiny checkpoints themselves
(about a second each).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distilserve.models import ExportError, load_manifest, load_model
from distilserve.models.batching import EncodedRow, assemble_batch
from distilserve.models.bundle import MANIFEST_NAME, MODEL_NAME, TOKENIZER_NAME, sha256_file
from distilserve.models.export import ExportOptions, Thresholds, export_bundle, infer_task
from distilserve.models.export.cli import Settings, run
from distilserve.models.export.isa import SCHEMES, ActivationScales, cpu_flags, detect_isa, resolve_scheme
from distilserve.models.export.samples import SAMPLE_QA_PAIRS, SAMPLE_TEXTS, read_sample_file
from distilserve.models.packing import run_padded_feed
from distilserve.models.tasks import ClassifyParams, QAInput
from distilserve.models.tokenization import TruncationConfig
from tests.conftest import ARCHS, TASKS
from tests.tiny_models import Arch, TinyTask, corpus

# transformers 4.57's pipeline calls np.array() on a torch tensor with numpy 2's copy keyword.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

Bundles = dict[tuple[Arch, TinyTask], Path]
TEXTS = [*corpus()[:12], "Hi.", "Café crème at the airport in Paris, 45 minutes late!", corpus()[40] * 3]
BUNDLE_FILES = {MANIFEST_NAME, MODEL_NAME, TOKENIZER_NAME}


def torch_outputs(checkpoint: Path, task: TinyTask, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch
    from transformers import AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    factory: Any = {
        "text-classification": AutoModelForSequenceClassification,
        "question-answering": AutoModelForQuestionAnswering,
        "feature-extraction": AutoModel,
    }[task]
    model = factory.from_pretrained(checkpoint).eval()
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in feed]
    with torch.inference_mode():
        output = model(**{name: torch.from_numpy(feed[name]) for name in names})
    return {key: value.numpy() for key, value in output.items() if isinstance(value, torch.Tensor)}


def leftovers(parent: Path) -> list[str]:
    """Staging or scratch folders an export left in ``parent``."""
    return sorted(path.name for path in parent.iterdir() if ".partial-" in path.name or ".work-" in path.name)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_graph_matches_pytorch(
    tiny_checkpoints: Bundles, tiny_bundles: Bundles, arch: Arch, task: TinyTask
) -> None:
    bundle = tiny_bundles[(arch, task)]
    model = load_model(bundle)
    truncation = TruncationConfig(max_length=model.manifest.max_length)
    if task == "question-answering":
        encodings = [model.tokenizer.encode(q, c, truncation=truncation) for q, c in SAMPLE_QA_PAIRS]
    else:
        encodings = [model.tokenizer.encode(text, truncation=truncation) for text in TEXTS]
    batch = assemble_batch([EncodedRow(e.ids, e.type_ids) for e in encodings], model.tokenizer.pad_token_id)
    # PyTorch runs the padded batch; a packed graph (BERT's default form) runs it packed and
    # answers in the padded layout.
    feed = {name: batch.feed[name] for name in model.session.input_names if name in batch.feed}
    onnx = run_padded_feed(model.session.run, model.session.input_names, feed, model.manifest.output_names)
    reference = torch_outputs(tiny_checkpoints[(arch, task)], task, feed)
    real = batch.attention_mask.astype(bool)
    for name, values in onnx.items():
        expected = reference[name]
        if values.ndim >= 2 and values.shape[:2] == real.shape:  # token-level: real tokens only
            values, expected = values[real], expected[real]
        np.testing.assert_allclose(values, expected, rtol=0, atol=1e-4)
    fp32_check = model.manifest.parity[0]
    assert (fp32_check.reference, fp32_check.candidate, fp32_check.passed) == ("pytorch", "onnx-fp32", True)
    assert fp32_check.metrics["max_abs_diff"] <= 1e-4
    assert model.manifest.quantization.mode == "none"
    assert {path.name for path in bundle.iterdir()} == BUNDLE_FILES


@pytest.mark.parametrize("arch", ARCHS)
def test_classification_equals_transformers_pipeline(
    tiny_checkpoints: Bundles, tiny_bundles: Bundles, arch: Arch
) -> None:
    from transformers import pipeline

    checkpoint = tiny_checkpoints[(arch, "text-classification")]
    reference = pipeline(
        "text-classification", model=str(checkpoint), tokenizer=str(checkpoint), device="cpu"
    )
    model = load_model(tiny_bundles[(arch, "text-classification")])
    for top_k in (1, 2, None):
        expected = reference(TEXTS, top_k=top_k)
        results = model.predict(TEXTS, ClassifyParams(top_k=top_k))
        for got, want in zip(results, expected, strict=True):
            want = want if isinstance(want, list) else [want]
            assert [score.label for score in got] == [entry["label"] for entry in want]
            np.testing.assert_allclose(
                [score.score for score in got], [entry["score"] for entry in want], rtol=0, atol=1e-5
            )
    # The labels are the toy sentiment's names, and the head learned them (not one label for all).
    labels = {scores[0].label for scores in model.predict(TEXTS)}
    assert labels <= {"negative", "neutral", "positive"} and len(labels) > 1


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[:, :, None].astype(hidden.dtype)
    return (hidden * weights).sum(axis=1) / weights.sum(axis=1)  # type: ignore[no-any-return]


def pytorch_embeddings(checkpoint: Path, texts: list[str], pooling: str) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    feed = dict(tokenizer(texts, padding=True, return_tensors="np"))
    hidden = torch_outputs(checkpoint, "feature-extraction", feed)["last_hidden_state"]
    return hidden[:, 0] if pooling == "cls" else mean_pool(hidden, feed["attention_mask"])


@pytest.mark.parametrize("arch", ARCHS)
def test_embeddings_equal_pytorch_mean_pooling(
    tiny_checkpoints: Bundles, tiny_bundles: Bundles, arch: Arch
) -> None:
    checkpoint = tiny_checkpoints[(arch, "feature-extraction")]
    model = load_model(tiny_bundles[(arch, "feature-extraction")])
    assert (model.manifest.pooling, model.manifest.normalize) == ("mean", False)
    vectors = np.stack(model.predict(TEXTS))
    np.testing.assert_allclose(vectors, pytorch_embeddings(checkpoint, TEXTS, "mean"), rtol=0, atol=1e-4)


def sentence_transformers_folder(
    checkpoint: Path, target: Path, *, pooling: str, max_seq_length: int
) -> Path:
    """The tiny checkpoint laid out as a sentence-transformers model folder."""
    shutil.copytree(checkpoint, target)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "1_Pooling").mkdir()
    pooling_config = {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (target / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return target


def test_sentence_transformers_folder_cls_pooling_and_normalize(
    tiny_checkpoints: Bundles, tmp_path: Path
) -> None:
    checkpoint = tiny_checkpoints[("bert", "feature-extraction")]
    folder = sentence_transformers_folder(checkpoint, tmp_path / "st", pooling="cls", max_seq_length=64)
    # No --task: a sentence-transformers folder is feature extraction.
    manifest = export_bundle(ExportOptions(source=str(folder), output=tmp_path / "bundle", quantize="none"))
    assert (manifest.task, manifest.pooling, manifest.normalize, manifest.max_length) == (
        "feature-extraction",
        "cls",
        True,
        64,
    )
    vectors = np.stack(load_model(tmp_path / "bundle").predict(TEXTS))
    expected = pytorch_embeddings(checkpoint, TEXTS, "cls")
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-4)


def test_sentence_transformers_unsupported_pooling_is_refused(
    tiny_checkpoints: Bundles, tmp_path: Path
) -> None:
    folder = sentence_transformers_folder(
        tiny_checkpoints[("bert", "feature-extraction")], tmp_path / "st", pooling="mean", max_seq_length=64
    )
    config_path = folder / "1_Pooling" / "config.json"
    config = json.loads(config_path.read_text())
    config |= {"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ExportError, match="pooling_mode_max_tokens"):
        export_bundle(ExportOptions(source=str(folder), output=tmp_path / "bundle"))
    assert not (tmp_path / "bundle").exists() and leftovers(tmp_path) == []


def test_manifest_fields(tiny_checkpoints: Bundles, tiny_bundles: Bundles) -> None:
    bundle = tiny_bundles[("bert", "text-classification")]
    manifest = load_manifest(bundle)
    checkpoint = tiny_checkpoints[("bert", "text-classification")]
    assert manifest.task == "text-classification" and manifest.model_type == "bert"
    assert manifest.labels == {0: "negative", 1: "neutral", 2: "positive"}
    assert manifest.problem_type == "single_label_classification"
    assert manifest.max_length == 128  # min(tokenizer model_max_length, max_position_embeddings)
    # BERT is exported packed by default (--graph-form auto): position ids per sequence, and
    # the first token of each sequence for a classifier's head.
    assert manifest.graph_form == "packed"
    assert manifest.input_names == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "position_ids",
        "segment_starts",
    ]
    assert manifest.output_names == ["logits"]
    assert manifest.hidden_size == 32 and manifest.num_parameters and manifest.num_parameters > 10_000
    assert manifest.pooling is None
    assert manifest.source.id == str(checkpoint.resolve())
    assert manifest.source.sha256 == sha256_file(checkpoint / "model.safetensors")
    assert {"torch", "transformers", "optimum", "onnxruntime", "tokenizers"} <= set(manifest.versions)
    assert set(manifest.files) == {MODEL_NAME, TOKENIZER_NAME}
    assert (
        manifest.quantization.model_bytes
        == manifest.quantization.fp32_bytes
        == (bundle / MODEL_NAME).stat().st_size
    )
    # DistilBERT takes no segment ids, and its graph does not either.
    distil = load_manifest(tiny_bundles[("distilbert", "question-answering")])
    assert distil.input_names == ["input_ids", "attention_mask"]
    assert distil.output_names == ["start_logits", "end_logits"]
    assert distil.labels == {} and distil.problem_type is None


@pytest.mark.parametrize("task", ["text-classification", "feature-extraction"])
@pytest.mark.parametrize("arch", ARCHS)
def test_int8_bundle_records_agreement(
    tiny_bundles: Bundles, tiny_int8_bundles: Bundles, arch: Arch, task: TinyTask
) -> None:
    bundle = tiny_int8_bundles[(arch, task)]
    manifest = load_manifest(bundle)
    quant = manifest.quantization
    assert quant.mode == "int8" and quant.per_channel and quant.isa in SCHEMES
    assert (quant.weight_type, quant.activation_type) == (
        SCHEMES[quant.isa].weight_type,
        SCHEMES[quant.isa].activation_type,
    )
    # Only the int8 graph is in the bundle; the fp32 size is recorded, not shipped.
    assert {path.name for path in bundle.iterdir()} == BUNDLE_FILES
    assert quant.fp32_bytes and quant.model_bytes == (bundle / MODEL_NAME).stat().st_size < quant.fp32_bytes
    checks = {check.candidate: check for check in manifest.parity}
    assert checks["onnx-fp32"].passed
    agreement = checks["onnx-int8"]
    assert agreement.reference == "onnx-fp32" and agreement.passed
    assert agreement.samples == len(SAMPLE_TEXTS)
    if task == "text-classification":
        assert set(agreement.thresholds) == {"argmax_agreement", "max_probability_gap"}
        assert agreement.metrics["argmax_agreement"] >= 0.9
    else:
        assert set(agreement.thresholds) == {"mean_cosine", "min_cosine"}
        assert agreement.metrics["mean_cosine"] >= 0.98
    assert not quant.optimized_graph and "onnx-fp32-fused" not in checks  # fusion is opt-in
    # The int8 bundle serves the same answers as the fp32 one.
    int8_results = load_model(bundle).predict(TEXTS)
    fp32_results = load_model(tiny_bundles[(arch, task)]).predict(TEXTS)
    if task == "text-classification":
        same = [a[0].label == b[0].label for a, b in zip(int8_results, fp32_results, strict=True)]
        assert np.mean(same) >= 0.9
    else:
        a, b = np.stack(int8_results), np.stack(fp32_results)
        cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cosine.min() > 0.95


def test_fused_int8_with_the_avx2_u8u8_scheme(tiny_checkpoints: Bundles, tmp_path: Path) -> None:
    """--optimize fuses the graph before quantizing; the AVX2 scheme's uint8 weights also run
    through the fused graph's quantized attention."""
    options = ExportOptions(
        source=str(tiny_checkpoints[("distilbert", "feature-extraction")]),
        output=tmp_path / "b",
        isa="avx2",
        optimize=True,
    )
    manifest = export_bundle(options)
    quant = manifest.quantization
    assert (quant.isa, quant.weight_type, quant.optimized_graph) == ("avx2", "QUInt8", True)
    assert [check.candidate for check in manifest.parity] == ["onnx-fp32", "onnx-fp32-fused", "onnx-int8"]
    assert all(check.passed for check in manifest.parity)
    assert len(load_model(tmp_path / "b").predict(["one sentence"])[0]) == 32


def test_mixed_precision_keeps_the_chosen_nodes_in_fp32(tiny_checkpoints: Bundles, tmp_path: Path) -> None:
    import onnx

    source = str(tiny_checkpoints[("bert", "text-classification")])
    manifest = export_bundle(
        ExportOptions(source=source, output=tmp_path / "mixed", keep_fp32=("*classifier*",))
    )
    kept = manifest.quantization.fp32_nodes
    assert kept and all("classifier" in name for name in kept)
    graph = onnx.load(str(tmp_path / "mixed" / MODEL_NAME)).graph
    float_matmuls = {node.name for node in graph.node if node.op_type in ("MatMul", "Gemm")}
    integer_ops = [
        node.name
        for node in graph.node
        if node.op_type in ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
    ]
    # The head stays a float MatMul (the quantizer rewrites a Gemm as "<name>_MatMul" + Add);
    # the encoder's projections are quantized all the same.
    assert all(any(matmul.startswith(name) for matmul in float_matmuls) for name in kept)
    assert integer_ops and not any("classifier" in name for name in integer_ops)
    assert all(check.passed for check in manifest.parity)

    with pytest.raises(ExportError, match="matches no MatMul/Gemm node"):
        export_bundle(ExportOptions(source=source, output=tmp_path / "none", keep_fp32=("*no_such_layer*",)))
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("activation_scales", ["per-row", "per-tensor"])
def test_mixed_precision_works_with_either_activation_scale(
    tiny_checkpoints: Bundles, tmp_path: Path, activation_scales: ActivationScales
) -> None:
    """--keep-fp32 names the fp32 graph's nodes, whichever int8 rewrite follows."""
    import onnx

    manifest = export_bundle(
        ExportOptions(
            source=str(tiny_checkpoints[("bert", "feature-extraction")]),
            output=tmp_path / "mixed",
            keep_fp32=("*layer.0/*",),
            activation_scales=activation_scales,
        )
    )
    quant = manifest.quantization
    assert quant.activation_scales == activation_scales and quant.fp32_nodes
    graph = onnx.load(str(tmp_path / "mixed" / MODEL_NAME)).graph
    float_matmuls = {node.name for node in graph.node if node.op_type == "MatMul"}
    integer_matmuls = ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
    integer_ops = [node.name for node in graph.node if node.op_type in integer_matmuls]
    assert set(quant.fp32_nodes) <= float_matmuls
    assert integer_ops and not any("layer.0/" in name for name in integer_ops)
    assert all(check.passed for check in manifest.parity)


def test_per_row_int8_with_the_avx2_u8u8_scheme(tiny_checkpoints: Bundles, tmp_path: Path) -> None:
    """AVX2's scheme stores the weights as u8 around 128; the answers still agree with fp32."""
    import onnx

    manifest = export_bundle(
        ExportOptions(
            source=str(tiny_checkpoints[("distilbert", "text-classification")]),
            output=tmp_path / "b",
            isa="avx2",
        )
    )
    assert (manifest.quantization.weight_type, manifest.quantization.activation_scales) == (
        "QUInt8",
        "per-row",
    )
    graph = onnx.load(str(tmp_path / "b" / MODEL_NAME)).graph
    weights = {tensor.name: tensor.data_type for tensor in graph.initializer}
    assert {weights[name] for name in weights if name.endswith("_weight_int8")} == {onnx.TensorProto.UINT8}
    assert all(check.passed for check in manifest.parity)


def test_question_answering_bundle_answers(tiny_bundles: Bundles) -> None:
    model = load_model(tiny_bundles[("bert", "question-answering")])
    (answers,) = model.predict(
        [QAInput("Where was the flight?", "The flight was slow at the airport in Paris.")]
    )
    assert answers


def test_infer_task() -> None:
    assert infer_task(["DistilBertForSequenceClassification"]) == "text-classification"
    assert infer_task(["BertForQuestionAnswering"]) == "question-answering"
    assert infer_task(["BertModel"]) == "feature-extraction"
    assert infer_task(["DistilBertModel"]) == "feature-extraction"
    assert infer_task(None, sentence_transformers=True) == "feature-extraction"
    for architectures in (["BertForMaskedLM"], ["BertLMHeadModel"], ["BertForTokenClassification"], None, []):
        with pytest.raises(ExportError, match="pass --task"):
            infer_task(architectures)


def test_cli_infers_task_and_reads_extra_samples(
    tiny_checkpoints: Bundles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = tmp_path / "samples.txt"
    samples.write_text("# my own samples\nthe plot was slow\n\nthe waiter was charming and moving\n")
    settings = Settings(
        source=str(tiny_checkpoints[("distilbert", "text-classification")]),
        output=tmp_path / "bundle",
        samples=samples,
        quantize="none",
    )
    assert run(settings) == 0
    manifest = load_manifest(tmp_path / "bundle")
    assert manifest.task == "text-classification"
    assert manifest.parity[0].samples == len(SAMPLE_TEXTS) + 2
    assert capsys.readouterr().out == f"{(tmp_path / 'bundle').resolve()}\n"


def test_qa_sample_file_needs_tabs(tmp_path: Path) -> None:
    path = tmp_path / "qa.txt"
    path.write_text("Who?\tAlice did.\nno tab here\n")
    with pytest.raises(ExportError, match="sample 2"):
        read_sample_file(path, "question-answering")
    assert read_sample_file(path, "text-classification").texts == ("Who?\tAlice did.", "no tab here")


def corrupt_checkpoint(tiny_checkpoints: Bundles, tmp_path: Path, **config_changes: Any) -> Path:
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoints[("bert", "text-classification")], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | config_changes))
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing folder", "folder does not exist"),
        ("no config", "no config.json"),
        ("masked lm", "cannot infer the task from the architectures \\(BertForMaskedLM\\)"),
        ("unknown model type", "cannot load the model config"),
        ("missing head", "no weights for"),
    ],
)
def test_bad_source_fails_clearly_and_leaves_nothing(
    tiny_checkpoints: Bundles, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    task = None
    if case == "missing folder":
        source = tmp_path / "does-not-exist"
    elif case == "no config":
        source = tmp_path / "empty"
        source.mkdir()
        (source / "model.safetensors").write_bytes(b"not a model")
    elif case == "masked lm":
        source = corrupt_checkpoint(tiny_checkpoints, tmp_path, architectures=["BertForMaskedLM"])
    elif case == "unknown model type":
        source = corrupt_checkpoint(tiny_checkpoints, tmp_path, model_type="no-such-model")
    else:
        # A base encoder exported for question answering: its QA head would be random.
        source, task = tiny_checkpoints[("bert", "feature-extraction")], "question-answering"
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=message):
        export_bundle(ExportOptions(source=str(source), output=out / "bundle", task=task))  # type: ignore[arg-type]
    assert not (out / "bundle").exists()
    assert not out.exists() or leftovers(out) == []
    # The command reports the same error on one line and exits 2: a source it cannot use.
    assert run(Settings(source=str(source), output=out / "bundle", task=task)) == 2
    assert capsys.readouterr().err.startswith("distilserve export: ")


def test_failed_agreement_leaves_no_bundle_and_keeps_the_old_one(
    tiny_checkpoints: Bundles, tiny_bundles: Bundles, tmp_path: Path
) -> None:
    checkpoint = tiny_checkpoints[("bert", "text-classification")]
    output = tmp_path / "bundle"
    strict = Thresholds(max_probability_gap=0.0)  # int8 always moves probabilities a little
    with pytest.raises(ExportError, match=r"int8 does not agree with fp32.*max_probability_gap"):
        export_bundle(ExportOptions(source=str(checkpoint), output=output, thresholds=strict))
    assert not output.exists() and leftovers(tmp_path) == []
    # With --overwrite, a failed export leaves the previous bundle as it was.
    shutil.copytree(tiny_bundles[("bert", "text-classification")], output)
    before = (output / MANIFEST_NAME).read_bytes()
    with pytest.raises(ExportError, match="int8 does not agree"):
        export_bundle(ExportOptions(source=str(checkpoint), output=output, thresholds=strict, overwrite=True))
    assert (output / MANIFEST_NAME).read_bytes() == before and leftovers(tmp_path) == []
    load_model(output)


def test_failed_fp32_parity_is_an_error(tiny_checkpoints: Bundles, tmp_path: Path) -> None:
    options = ExportOptions(
        source=str(tiny_checkpoints[("bert", "feature-extraction")]),
        output=tmp_path / "bundle",
        thresholds=Thresholds(fp32_max_abs_diff=1e-12),
    )
    with pytest.raises(ExportError, match="does not reproduce the PyTorch model"):
        export_bundle(options)
    assert not (tmp_path / "bundle").exists() and leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(tiny_checkpoints: Bundles, tmp_path: Path) -> None:
    output = tmp_path / "bundle"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="--overwrite"):
        export_bundle(
            ExportOptions(source=str(tiny_checkpoints[("bert", "feature-extraction")]), output=output)
        )
    assert (output / "keep.txt").read_text() == "mine"


X86_VNNI = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 avx512f avx512bw avx512_vnni
bogomips\t: 5800.00
"""
X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma avx2 bmi2\n"
X86_AVX_VNNI = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 avx_vnni\n"
X86_OLD = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3\n"
ARM = (
    "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 crc32 atomics asimddp\n"
)


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "isa"),
    [
        (X86_VNNI, "x86_64", "avx512_vnni"),
        (X86_AVX2, "x86_64", "avx2"),
        (X86_AVX_VNNI, "x86_64", "avx_vnni"),
        (X86_OLD, "x86_64", "generic"),
        (ARM, "aarch64", "arm64"),
        (ARM, "arm64", "arm64"),
        ("", "riscv64", "generic"),
    ],
)
def test_isa_detection_from_cpuinfo(cpuinfo: str, machine: str, isa: str) -> None:
    assert detect_isa(cpuinfo, machine) == isa


def test_isa_schemes() -> None:
    assert "avx512_vnni" in cpu_flags(X86_VNNI) and "asimddp" in cpu_flags(ARM)
    vnni, avx2, arm = SCHEMES["avx512_vnni"], SCHEMES["avx2"], SCHEMES["arm64"]
    assert (vnni.activation_type, vnni.weight_type, vnni.reduce_range) == ("QUInt8", "QInt8", False)
    assert (avx2.activation_type, avx2.weight_type) == ("QUInt8", "QUInt8")
    assert arm.weight_type == "QInt8"
    assert resolve_scheme("auto") == SCHEMES[detect_isa()]
    assert resolve_scheme("arm64") == arm
