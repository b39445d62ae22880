#!/usr/bin/env python3
"""Is fusing the graph before int8 quantization worth it? all-MiniLM-L6-v2, measured.

Exports the packaged MiniLM to fp32 ONNX, builds int8 variants with the export's own code
(``distilserve.models.export.quantize``): unfused or fused first (``--optimize``), per-channel or per-tensor
weights, and compares them:

* accuracy: cosine of each variant's embeddings to fp32 over the STS-B dev sentences, and STS-B
  dev Spearman (x100) of the embeddings' cosine similarity with the gold scores;
* speed: CPU milliseconds per batch (``time.thread_time`` with one intra-op thread, so that other
  processes on a shared machine do not inflate the figures), batches of 1, 8 and 32 STS-B
  sentences, median of ``--rounds`` rounds in which the variants take turns.

    .venv/bin/python scripts/bench_int8_fusion.py [--rounds 15] [--isa auto]

It informed the export's default (no fusion; see ``models/export/quantize.py`` for the figures).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path
from typing import get_args

import numpy as np
from scipy.stats import spearmanr

from distilserve.models.batching import EncodedRow, assemble_batch
from distilserve.models.bundle import MODEL_NAME, TOKENIZER_NAME
from distilserve.models.export import ExportOptions, export_bundle
from distilserve.models.export.default_model import minilm_source
from distilserve.models.export.isa import IsaChoice, resolve_scheme
from distilserve.models.export.quantize import fuse_transformer_graph, quantize_int8
from distilserve.models.session import OnnxSession, SessionOptions
from distilserve.models.tokenization import ThreadSafeTokenizer, TruncationConfig

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZES = (1, 8, 32)


def read_sts(data_dir: Path) -> tuple[list[str], list[str], np.ndarray]:
    with (data_dir / "stsbenchmark" / "sts-dev.csv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row[5] for row in rows], [row[6] for row in rows], np.asarray([float(row[4]) for row in rows])


def feeds(rows: list[EncodedRow], size: int) -> list[dict[str, np.ndarray]]:
    return [assemble_batch(rows[start : start + size], 0).feed for start in range(0, len(rows), size)]


def embed(session: OnnxSession, rows: list[EncodedRow]) -> np.ndarray:
    vectors = []
    for feed in feeds(rows, 64):
        hidden = session.run(feed, ["last_hidden_state"])["last_hidden_state"]
        mask = feed["attention_mask"][:, :, None]
        pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
        vectors.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(vectors)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--isa", choices=get_args(IsaChoice), default="auto")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    scheme = resolve_scheme(args.isa)
    first, second, gold = read_sts(args.data_dir)

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        source, _ = minilm_source()
        export_bundle(ExportOptions(source=str(source), output=scratch / "fp32", quantize="none"))
        fp32 = scratch / "fp32" / MODEL_NAME
        fused = scratch / "fused.onnx"
        print("fused ops:", fuse_transformer_graph(fp32, fused, num_heads=12, hidden_size=384))
        variants = {"fp32": fp32}
        for graph_name, graph in (("unfused", fp32), ("fused", fused)):
            for per_channel in (True, False):
                name = f"int8 {graph_name} {'per-channel' if per_channel else 'per-tensor'}"
                variants[name] = scratch / f"{name.replace(' ', '-')}.onnx"
                quantize_int8(graph, variants[name], scheme, per_channel=per_channel)

        tokenizer = ThreadSafeTokenizer.from_file(scratch / "fp32" / TOKENIZER_NAME)
        truncation = TruncationConfig(max_length=256)

        def encode(texts: list[str]) -> list[EncodedRow]:
            return [
                EncodedRow(e.ids, e.type_ids)
                for e in (tokenizer.encode(t, truncation=truncation) for t in texts)
            ]

        rows = encode(first + second)
        options = SessionOptions(intra_op_threads=1, allow_spinning=False)
        sessions = {name: OnnxSession(path, options) for name, path in variants.items()}

        print(
            f"\nISA scheme {scheme.isa}: {scheme.weight_type} weights, {scheme.activation_type} activations"
        )
        print(f"{'variant':28s} {'MB':>6s} {'cos mean':>9s} {'cos min':>8s} {'STS-B':>6s}")
        reference = embed(sessions["fp32"], rows)
        for name, session in sessions.items():
            vectors = reference if name == "fp32" else embed(session, rows)
            cosine = (vectors * reference).sum(axis=1)
            half = len(first)
            spearman = spearmanr((vectors[:half] * vectors[half:]).sum(axis=1), gold).statistic * 100
            size = variants[name].stat().st_size / 1e6
            print(f"{name:28s} {size:6.1f} {cosine.mean():9.4f} {cosine.min():8.4f} {spearman:6.2f}")

        shapes = {size: feeds(rows[: max(32, 4 * size)], size) for size in BATCH_SIZES}
        times: dict[str, dict[int, list[float]]] = {name: {size: [] for size in shapes} for name in sessions}
        for session in sessions.values():  # warm-up
            for batches in shapes.values():
                session.run(batches[0])
        for _ in range(args.rounds):
            for name, session in sessions.items():
                for size, batches in shapes.items():
                    started = time.thread_time()
                    for feed in batches:
                        session.run(feed)
                    times[name][size].append((time.thread_time() - started) / len(batches) * 1000)
        print(f"\nCPU ms per batch, one intra-op thread, median of {args.rounds} interleaved rounds")
        print(f"{'variant':28s} " + " ".join(f"{'batch ' + str(size):>10s}" for size in BATCH_SIZES))
        for name, by_size in times.items():
            print(
                f"{name:28s} " + " ".join(f"{statistics.median(by_size[size]):10.2f}" for size in BATCH_SIZES)
            )


if __name__ == "__main__":
    main()
