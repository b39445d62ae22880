"""What every committed model-zoo bundle's test checks alike: its card names its data, licences
and build script, and the bundle fits the zoo's size limit."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# model-zoo/'s limit per bundle (all of its files).
ZOO_BUNDLE_MAX_BYTES = 25_000_000
# What a card of a bundle trained on SQuAD names: the data's licence, the base model's, the train
# file and the ids of its inferred answer starts.
SQUAD_CARD_TERMS = (
    "CC BY-SA 4.0",
    "Apache-2.0",
    "squad_v1.1_train.json",
    "squad_v1.1_train_ambiguous_ids.txt",
)


def documented_card(bundle: Path, required: Iterable[str]) -> str:
    """The bundle's MODEL_CARD.md, after checking that it names every ``required`` term and that
    the bundle is under the zoo's size limit."""
    card = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    for term in (*required, "Licence"):
        assert term in card, term
    size = sum(path.stat().st_size for path in bundle.iterdir())
    assert size < ZOO_BUNDLE_MAX_BYTES
    return card
