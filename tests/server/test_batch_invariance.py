"""A request's answer does not depend on what it is batched with, through the whole server.

One request with many texts has its rows planned into padded batches together (the batcher's
``plan_groups``); each text sent alone runs as a batch of one. With the default int8 export
(per-row activation scales) the two answers agree within 1e-3: the padding, the planner and
the batch assembly add nothing that depends on the neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distilserve.models.batching import EncodedRow
from tests.server.conftest import running_app, state_of
from tests.tiny_models import Arch, TinyTask, corpus

BundleMap = dict[tuple[Arch, TinyTask], Path]
TOLERANCE = 1e-3
TEXTS = corpus(40, seed=5)


def record_batches(app: Any, model: str) -> list[int]:
    """Log the row count of every batch the model runs (no change to what it computes)."""
    batcher = state_of(app).registry.models[model].batcher
    real_forward = batcher.forward
    sizes: list[int] = []

    def forward(rows: Sequence[EncodedRow]) -> Sequence[Any]:
        sizes.append(len(rows))
        return real_forward(rows)

    batcher.forward = forward
    return sizes


async def test_int8_answers_are_the_same_alone_and_batched(tiny_int8_bundles: BundleMap) -> None:
    models = [
        f"sentiment={tiny_int8_bundles[('distilbert', 'text-classification')]}",
        f"encoder={tiny_int8_bundles[('bert', 'feature-extraction')]}",
    ]
    async with running_app(models) as (app, client):
        classify_batches = record_batches(app, "sentiment")
        embed_batches = record_batches(app, "encoder")

        async def logits(texts: list[str]) -> np.ndarray:
            response = await client.post(
                "/v1/classify",
                json={"model": "sentiment", "input": texts, "raw_scores": True, "top_k": None},
            )
            assert response.status_code == 200, response.text
            # Every label's raw logit, in label-name order (the response lists them best first).
            return np.array(
                [
                    [label["score"] for label in sorted(item["labels"], key=lambda label: label["label"])]
                    for item in response.json()["data"]
                ]
            )

        async def vectors(texts: list[str]) -> np.ndarray:
            response = await client.post("/v1/embeddings", json={"model": "encoder", "input": texts})
            assert response.status_code == 200, response.text
            return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)

        batched_logits = await logits(TEXTS)
        alone_logits = np.concatenate([await logits([text]) for text in TEXTS])
        batched_vectors = await vectors(TEXTS)
        alone_vectors = np.concatenate([await vectors([text]) for text in TEXTS])

    # The many-text requests really ran in multi-row batches, the single texts alone.
    assert max(classify_batches) > 1 and max(embed_batches) > 1
    assert classify_batches[-len(TEXTS) :] == [1] * len(TEXTS)
    assert np.abs(batched_logits - alone_logits).max() <= TOLERANCE
    assert (batched_logits.argmax(1) == alone_logits.argmax(1)).all()
    assert np.abs(batched_vectors - alone_vectors).max() <= TOLERANCE
    cosines = (batched_vectors * alone_vectors).sum(1) / (
        np.linalg.norm(batched_vectors, axis=1) * np.linalg.norm(alone_vectors, axis=1)
    )
    assert cosines.min() >= 0.9999
