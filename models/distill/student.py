"""Student initialisation from a teacher, as DistilBERT does it.

The student has the teacher's width (hidden size, heads, feed-forward size, vocabulary) and a
subset of its layers: every other layer by default, or a chosen list. Every weight is copied
from the teacher: embeddings, the chosen layers (renumbered 0..k-1), the pooler and the
classification head. Starting from the teacher's own layers rather than at random is what lets
a distilled student reach the teacher's accuracy in one or two epochs of task data.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

# Layer stacks in transformers' encoder models: BERT/RoBERTa/ELECTRA/MiniLM keep them at
# ``<prefix>.encoder.layer.<i>.``, DistilBERT at ``distilbert.transformer.layer.<i>.``.
LAYER_KEY = re.compile(r"^(?P<stack>(?:.*\.)?(?:encoder|transformer)\.layer)\.(?P<index>\d+)\.(?P<rest>.+)$")
# The config attribute that holds the layer count, by model family.
LAYER_COUNT_ATTRIBUTES = ("num_hidden_layers", "n_layers")


def layer_count_attribute(config: Any) -> str:
    for name in LAYER_COUNT_ATTRIBUTES:
        # DistilBertConfig maps num_hidden_layers to n_layers; set the attribute it stores.
        if name in config.to_dict():
            return name
    raise ValueError(f"{type(config).__name__} has no layer count ({' or '.join(LAYER_COUNT_ATTRIBUTES)})")


def num_layers(config: Any) -> int:
    return int(getattr(config, layer_count_attribute(config)))


def default_student_layers(teacher_layers: int) -> list[int]:
    """Every other layer, from the first: 6 -> [0, 2, 4], 12 -> [0, 2, ..., 10]."""
    return list(range(0, teacher_layers, 2))


def validate_layers(layers: Sequence[int], teacher_layers: int) -> list[int]:
    chosen = list(layers)
    if not chosen:
        raise ValueError("the student needs at least one layer")
    if any(not 0 <= index < teacher_layers for index in chosen):
        raise ValueError(
            f"student layers {chosen} must lie in 0..{teacher_layers - 1} (the teacher has {teacher_layers})"
        )
    if len(set(chosen)) != len(chosen) or chosen != sorted(chosen):
        # A repeated or reordered layer stack is possible but never what one means; refuse it.
        raise ValueError(f"student layers {chosen} must be distinct and increasing")
    return chosen


def student_state_dict(teacher_state: dict[str, Any], layers: Sequence[int]) -> dict[str, Any]:
    """The teacher's weights renamed for the student: layer ``layers[j]`` becomes layer ``j``."""
    new_index = {old: new for new, old in enumerate(layers)}
    state: dict[str, Any] = {}
    for key, value in teacher_state.items():
        match = LAYER_KEY.match(key)
        if match is None:
            state[key] = value
            continue
        old = int(match["index"])
        if old in new_index:
            state[f"{match['stack']}.{new_index[old]}.{match['rest']}"] = value
    return state


def build_student(teacher: Any, layers: Sequence[int]) -> Any:
    """A new model of the teacher's class and width with the chosen layers, all weights copied."""
    config = copy.deepcopy(teacher.config)
    attribute = layer_count_attribute(config)
    chosen = validate_layers(layers, int(getattr(config, attribute)))
    setattr(config, attribute, len(chosen))
    student = type(teacher)(config)
    state = student_state_dict(teacher.state_dict(), chosen)
    # Checked by hand rather than with strict=True, which trips on the position_ids buffer that
    # some checkpoints carry. A weight the key pattern missed (a new architecture) must fail
    # here, not train silently from a random initialisation.
    result = student.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("position_ids")]
    unexpected = [key for key in result.unexpected_keys if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"cannot map {type(teacher).__name__} weights onto a {len(chosen)}-layer student: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return student


def count_parameters(model: Any) -> int:
    return int(sum(parameter.numel() for parameter in model.parameters()))
