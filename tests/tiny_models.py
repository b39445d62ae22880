"""Tiny, randomly initialised checkpoints the tests build themselves (nothing is downloaded).

A WordPiece tokenizer is trained with `tokenizers` on a few hundred generated sentences, and
2-layer DistilBERT and BERT configs are instantiated for classification, question answering,
the base model and reranking (a one-logit cross-encoder). Each checkpoint is a normal Hugging
Face folder (config, weights, tokenizer), exactly what ``distilserve export`` takes from a user.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Literal

Arch = Literal["distilbert", "bert"]
TinyTask = Literal["text-classification", "question-answering", "feature-extraction", "rerank"]

SUBJECTS = [
    "the film",
    "this movie",
    "the actor",
    "our hotel",
    "the service",
    "my order",
    "the plot",
    "the soundtrack",
    "a waiter",
    "the battery",
    "this phone",
    "the flight",
    "the teacher",
]
VERBS = ["was", "is", "seemed", "felt", "became", "remained", "looked"]
ADJECTIVES = [
    "wonderful",
    "terrible",
    "boring",
    "brilliant",
    "slow",
    "delightful",
    "awful",
    "charming",
    "unbearable",
    "excellent",
    "mediocre",
    "surprising",
    "forgettable",
    "moving",
]
TAILS = [
    "from start to finish",
    "for most of the evening",
    "despite the hype",
    "and i loved it",
    "but the ending failed",
    "according to everyone",
    "in every scene",
    "at the airport in paris",
    "when it rained on tuesday",
    "after 45 minutes",
]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
POSITIVE = {"wonderful", "brilliant", "delightful", "charming", "excellent", "moving"}
NEGATIVE = {"terrible", "boring", "slow", "awful", "unbearable", "forgettable"}


def toy_label(sentence: str) -> int:
    """The sentiment of a corpus sentence: the adjective after its verb decides."""
    words = sentence.lower().replace(",", " ").split()
    adjective = next((word for word in words[2:] if word in POSITIVE | NEGATIVE), "")
    return 2 if adjective in POSITIVE else 0 if adjective in NEGATIVE else 1


def corpus(size: int = 400, seed: int = 0) -> list[str]:
    """Deterministic sentences with varied length, punctuation and digits."""
    rng = random.Random(seed)
    combos = list(itertools.product(SUBJECTS, VERBS, ADJECTIVES))
    rng.shuffle(combos)
    sentences = []
    for index, (subject, verb, adjective) in enumerate(combos[:size]):
        sentence = f"{subject} {verb} {adjective}"
        if index % 2:
            sentence += " " + rng.choice(TAILS)
        if index % 3 == 0:
            sentence += ", " + " ".join(rng.choice(ADJECTIVES) for _ in range(rng.randint(1, 12)))
        sentences.append(sentence.capitalize() + rng.choice([".", "!", "?", "..."]))
    return sentences


def train_tokenizer(folder: Path, arch: Arch, model_max_length: int = 128) -> None:
    """Build a BERT-style WordPiece tokenizer and save it as a transformers fast tokenizer.

    The vocabulary is built here, not by ``tokenizers``' WordPiece trainer: the trainer breaks
    ties in hash-map order, which changes from one process to the next, so every test session
    got different token ids, hence different tiny models, and checks near a threshold (int8
    agreement on near-tied logits) passed or failed by chance. Here the ids are fixed: the
    special tokens, every character alone and as a continuation (``##x``, so any word can be
    spelled), then the corpus's words, sorted.
    """
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    pieces = (pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)) for text in corpus())
    words = sorted({word for words_and_offsets in pieces for word, _ in words_and_offsets})
    characters = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    tokens = [*specials, *characters, *(f"##{character}" for character in characters), *words]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        # DistilBERT takes no segment ids; its tokenizer must not produce them.
        model_input_names=["input_ids", "attention_mask"]
        if arch == "distilbert"
        else ["input_ids", "token_type_ids", "attention_mask"],
    )
    fast.save_pretrained(folder)


def build_checkpoint(folder: Path, arch: Arch, task: TinyTask, *, seed: int = 0) -> Path:
    """Save a tiny random checkpoint of ``arch`` for ``task`` in ``folder``."""
    import torch
    from transformers import (
        AutoModel,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        BertConfig,
        DistilBertConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    train_tokenizer(folder, arch)
    common = {"vocab_size": 600, "max_position_embeddings": 128, "pad_token_id": 0, "initializer_range": 0.2}
    if task == "text-classification":
        common |= {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    if task == "rerank":
        common |= {"num_labels": 1}
    if arch == "distilbert":
        config = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common)
    else:
        config = BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **common
        )
    factory = {
        "text-classification": AutoModelForSequenceClassification,
        "question-answering": AutoModelForQuestionAnswering,
        "feature-extraction": AutoModel,
        "rerank": AutoModelForSequenceClassification,
    }[task]
    torch.manual_seed(seed)
    model = factory.from_config(config)
    if task == "text-classification":
        # A random head gives every sentence the same label. A few steps on the corpus's toy
        # sentiment make the labels depend on the text, as in a real model, so that int8
        # agreement and label ordering are meaningful checks.
        fit_toy_sentiment(model, folder)
    model.eval()
    model.save_pretrained(folder)
    return folder


def fit_toy_sentiment(model: object, folder: Path, steps: int = 40) -> None:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    sentences = corpus()
    labels = torch.tensor([toy_label(sentence) for sentence in sentences])
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)  # type: ignore[attr-defined]
    model.train()  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(0, len(sentences), (64,), generator=generator)
        inputs = {name: tensor[index] for name, tensor in batch.items()}
        loss = model(**inputs, labels=labels[index]).loss  # type: ignore[operator]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def toy_relevance_pairs(size: int = 256, seed: int = 0) -> tuple[list[tuple[str, str]], list[float]]:
    """(query, document) pairs of the corpus, half of them relevant (1.0: the document is about
    the query's subject). The tiny cross-encoder is random (a 2-layer model needs hundreds of
    steps to learn this), so the tests compare its scores with PyTorch's, not with these labels."""
    rng = random.Random(seed)
    sentences = corpus()
    pairs, labels = [], []
    for _ in range(size):
        document = rng.choice(sentences)
        subject = next(s for s in SUBJECTS if document.lower().startswith(s))
        relevant = rng.random() < 0.5
        query_subject = subject if relevant else rng.choice([s for s in SUBJECTS if s != subject])
        pairs.append((f"what about {query_subject}?", document))
        labels.append(1.0 if relevant else 0.0)
    return pairs, labels
