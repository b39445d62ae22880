"""What every committed model-zoo bundle's test checks alike: its card names its data, licences
and build script, its Python sample runs and prints what the card says, and the bundle fits the
zoo's size limit."""

from __future__ import annotations

import doctest
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from tests.conftest import REPO_ROOT

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
    check_python_sample(card)
    return card


def python_sample(card: str) -> tuple[list[str], str | None]:
    """The card's Python sample: the indented lines from its first ``from``/``import`` statement to
    the block's end, and the ``# ...`` line after them that shows what the last one returns (if
    any). No sample gives ``([], None)``."""
    lines = card.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(("    from ", "    import "))), None)
    if start is None:
        return [], None
    source: list[str] = []
    for line in lines[start:]:
        if not line.startswith("    ") or not line.strip():
            break
        if line.startswith("    #"):
            return source, line.removeprefix("    #").strip()
        source.append(line.removeprefix("    "))
    return source, None


def check_python_sample(card: str) -> None:
    """Run the card's Python sample as a user of the installed package would: a fresh interpreter
    in the repository root (the sample's paths are written from there) that does not put that root
    on ``sys.path`` (``-I``), so ``from models import ...`` fails as it would for them. The repr of
    the last line must match the card's ``# ...`` line, ``...`` matching anything."""
    source, expected = python_sample(card)
    if not source:
        return
    program = "\n".join([*source[:-1], f"print(repr({source[-1]}))"])
    result = subprocess.run(
        [sys.executable, "-I", "-c", program], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    if expected is not None:
        checker = doctest.OutputChecker()
        assert checker.check_output(expected + "\n", result.stdout, doctest.ELLIPSIS), (
            expected,
            result.stdout,
        )
