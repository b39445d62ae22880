"""The packed graph form (``export --graph-form``): several sequences per row (``models.packing``).

Optimum exports the padded form; this module exports the same PyTorch model with
``torch.onnx.export`` around a wrapper that takes ``position_ids`` and a 3-D attention mask
``[rows, tokens, tokens]``. BERT's encoder (transformers' ``BertModel``) accepts both as they are:
a 3-D mask becomes the additive ``[rows, 1, tokens, tokens]`` mask of every layer, and explicit
position ids replace ``arange``. A task whose head reads the ``[CLS]`` state (its ``TaskSpec``'s
``per_sequence_outputs``) gets the head applied to each sequence's first token, gathered with
``segment_starts``; the other tasks' outputs are per token already.

Only BERT-family checkpoints (``model_type`` "bert": BERT, MiniLM, e5, bge and the like) are
packed: DistilBERT's embeddings ignore position ids, and RoBERTa's count from its padding index.
``--graph-form auto`` (the default) packs what can be packed, for the tasks of short sequences
(``TaskSpec.packed_by_default``: classification and embeddings), and pads the rest. The export's
checks then run on packed feeds against the PyTorch model on padded ones, so a packed bundle is
held to the same parity and agreement marks as a padded one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from distilserve.models.bundle import MODEL_NAME, GraphForm
from distilserve.models.errors import ExportError
from distilserve.models.packing import POSITION_IDS, SEGMENT_STARTS
from distilserve.models.tasks import task_spec

PACKABLE_MODEL_TYPES = frozenset({"bert"})
GraphFormChoice = Literal["auto", "padded", "packed"]
GRAPH_FORM_CHOICES: tuple[GraphFormChoice, ...] = ("auto", "padded", "packed")


def check_packable(config: Any, model: Any, per_sequence: bool) -> None:
    """Raise ``ExportError`` unless this checkpoint can be exported in the packed form."""
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKABLE_MODEL_TYPES:
        raise ExportError(
            f"--graph-form packed supports {sorted(PACKABLE_MODEL_TYPES)} checkpoints (position ids "
            f"from 0, a 3-D attention mask); this one is {model_type!r}: export it with --graph-form "
            "padded (or auto)"
        )
    if per_sequence and (
        getattr(getattr(model, "bert", None), "pooler", None) is None or not hasattr(model, "classifier")
    ):
        raise ExportError(
            "--graph-form packed: this classifier has no BERT pooler and classifier head to apply "
            "per sequence; export it with --graph-form padded (or auto)"
        )


def resolve_graph_form(choice: GraphFormChoice, checkpoint: Any) -> tuple[GraphForm, str]:
    """The form to export, and why: ``auto`` packs a checkpoint that can be packed, of a task
    packed by default, and pads the rest; ``packed`` raises ``ExportError`` for one that cannot be."""
    if choice == "padded":
        return "padded", "--graph-form padded"
    spec = task_spec(checkpoint.task)
    if choice == "auto" and not spec.packed_by_default:
        return "padded", f"--graph-form auto: {spec.name} sequences are longer than a packed row"
    per_sequence = spec.per_sequence_outputs
    try:
        check_packable(checkpoint.config, checkpoint.model, per_sequence)
    except ExportError as exc:
        if choice == "packed":
            raise
        return "padded", f"not packable: {exc}"
    return "packed", f"--graph-form {choice}: a batch computes the tokens it holds, not rows x its longest"


def _wrapper(model: Any, output_names: tuple[str, ...], per_sequence: bool) -> Any:
    import torch

    class PackedEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if per_sequence:
                input_ids, attention_mask, token_type_ids, position_ids, segment_starts = inputs
                hidden = self.model.bert(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                    position_ids=position_ids,
                ).last_hidden_state
                first = hidden.reshape(-1, hidden.shape[-1]).index_select(0, segment_starts)
                # The pooler reads position 0 of each row: a row of one token per sequence.
                pooled = self.model.bert.pooler(first[:, None, :])
                return (self.model.classifier(self.model.dropout(pooled)),)
            input_ids, attention_mask, token_type_ids, position_ids = inputs
            outputs = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
            )
            return tuple(outputs[name] for name in output_names)

    return PackedEncoder().eval()


def export_packed_onnx(checkpoint: Any, folder: Path, opset: int | None) -> Path:
    """Write the packed graph of ``checkpoint.model`` to ``folder/model.onnx``."""
    import torch

    from distilserve.models.export.exporter import _quiet_export

    spec = task_spec(checkpoint.task)
    per_sequence = spec.per_sequence_outputs
    check_packable(checkpoint.config, checkpoint.model, per_sequence)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_NAME
    # Two rows of 6 tokens, three sequences: every axis the runtime varies is dynamic.
    input_ids = torch.full((2, 6), 5, dtype=torch.long)
    mask = torch.zeros((2, 6, 6), dtype=torch.long)
    mask[0, :3, :3] = mask[0, 3:, 3:] = mask[1, :4, :4] = 1
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 0, 0]])
    inputs = [input_ids, mask, torch.zeros_like(input_ids), position_ids]
    names = ["input_ids", "attention_mask", "token_type_ids", POSITION_IDS]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "rows", 1: "tokens"},
        "attention_mask": {0: "rows", 1: "tokens", 2: "tokens"},
        "token_type_ids": {0: "rows", 1: "tokens"},
        POSITION_IDS: {0: "rows", 1: "tokens"},
    }
    if per_sequence:
        inputs.append(torch.tensor([0, 3, 6]))
        names.append(SEGMENT_STARTS)
        axes[SEGMENT_STARTS] = {0: "sequences"}
        axes.update({name: {0: "sequences"} for name in spec.outputs})
    else:
        axes.update({name: {0: "rows", 1: "tokens"} for name in spec.outputs})
    try:
        with _quiet_export(), torch.inference_mode():
            torch.onnx.export(
                _wrapper(checkpoint.model, spec.outputs, per_sequence),
                tuple(inputs),
                str(path),
                input_names=names,
                output_names=list(spec.outputs),
                dynamic_axes=axes,
                opset_version=opset or 17,
                dynamo=False,  # the TorchScript exporter, as Optimum uses: dynamic axes as named
            )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ExportError(f"packed ONNX export of {checkpoint.source.ref} failed: {exc}") from exc
    return path
