"""Transfer-set augmentation for distilling a classifier (Tang et al., 2019, "Distilling
Task-Specific Knowledge from BERT into Simple Neural Networks", section 3.3).

A student learns the teacher's function only where it sees the teacher's outputs. A labelled set
of 67k phrases shows it few of the nearby inputs; perturbed copies of each training text, scored
by the teacher (never by the original label, which a perturbation may no longer deserve), show it
many more. Each copy is made from one training text, word by word:

* with ``mask_probability`` the word becomes the tokenizer's mask token, which teaches the
  student what the teacher concludes from the remaining context;
* else, with ``swap_probability``, it becomes a word drawn from the whole corpus by frequency
  (Tang et al. draw a word of the same part of speech; there is no tagger here, and frequency
  keeps swaps to words the teacher saw often);
* then, with ``ngram_probability``, the copy is cut to a random span of 1 to ``max_ngram`` words.

Copies equal to a training text or to an earlier copy are dropped, so the counts returned may be
below ``copies`` per text. Everything is drawn from one seeded generator: the same inputs give
the same transfer set, so the teacher-logit cache hits on a rerun.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentOptions:
    copies: int
    mask_token: str
    mask_probability: float = 0.1
    swap_probability: float = 0.1
    ngram_probability: float = 0.25
    max_ngram: int = 5
    seed: int = 42

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise ValueError("copies must be >= 0")
        for name in ("mask_probability", "swap_probability", "ngram_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.max_ngram < 1:
            raise ValueError("max_ngram must be >= 1")


def augment_texts(texts: Sequence[str], options: AugmentOptions) -> list[str]:
    """New texts made from ``texts`` (originals not included), up to ``copies`` per text."""
    if options.copies == 0 or not texts:
        return []
    rng = random.Random(options.seed)
    frequencies = Counter(word for text in texts for word in text.split())
    vocabulary = list(frequencies)
    # Cumulative, once: random.choices would otherwise sum the whole vocabulary per draw.
    cumulative = list(itertools.accumulate(frequencies[word] for word in vocabulary))
    seen = set(texts)
    augmented: list[str] = []
    for text in texts:
        words = text.split()
        if not words:
            continue
        # A few tries per copy: short texts often repeat themselves or the original.
        made = 0
        for _ in range(options.copies * 3):
            candidate = _perturb(words, rng, options, vocabulary, cumulative)
            if candidate and candidate not in seen:
                seen.add(candidate)
                augmented.append(candidate)
                made += 1
                if made == options.copies:
                    break
    return augmented


def _perturb(
    words: list[str],
    rng: random.Random,
    options: AugmentOptions,
    vocabulary: list[str],
    cumulative: list[int],
) -> str:
    out: list[str] = []
    for word in words:
        draw = rng.random()
        if draw < options.mask_probability:
            out.append(options.mask_token)
        elif draw < options.mask_probability + options.swap_probability:
            out.append(rng.choices(vocabulary, cum_weights=cumulative)[0])
        else:
            out.append(word)
    if rng.random() < options.ngram_probability:
        length = rng.randint(1, min(options.max_ngram, len(out)))
        start = rng.randint(0, len(out) - length)
        out = out[start : start + length]
    return " ".join(out)
