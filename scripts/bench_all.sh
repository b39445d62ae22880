#!/usr/bin/env bash
# Every benchmark behind BENCHMARKS.md's 2026-11-26 sections, in one sequence, on a quiet machine
# (nothing else running: the figures are ratios inside each run, but the runs still share 2 cores).
#
# Needs: the shipped bundles (model-zoo/), the default embedding bundle (distilserve build-default),
# scripts/build_bench_models.sh (the DistilBERT-size classifier), the per-tensor exports named below
# (the commands are in BENCHMARKS.md), runs/sst2 (the sentiment build's teacher int8 bundle, from
# scripts/build_sentiment_model.sh) and, for the infinity baseline, .bench-venvs/infinity.
#
# Usage: [ONLY="step-glob ..."] scripts/bench_all.sh [OUT]   (default runs/bench/2026-11-26); each step's JSON and
# markdown land in OUT, with lscpu's flags in OUT/cpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench/2026-11-26}
BENCH=(.venv/bin/distilserve bench)
EVAL=(.venv/bin/distilserve eval)
EMBED=${EMBED_BUNDLE:-$HOME/.cache/distilserve/bundles/all-minilm-l6-v2}
mkdir -p "$OUT"
{ lscpu | grep -E 'Model name|^CPU\(s\)|Flags'; uptime; git rev-parse --short HEAD; } > "$OUT/cpu.txt"
# ONLY="name-glob ...": run only the matching steps (e.g. ONLY="infinity-* chat").
step() {
  local name=$1 pattern selected=${ONLY:+0}
  shift
  for pattern in ${ONLY:-}; do [[ $name == $pattern ]] && selected=1; done
  if [ "${selected:-1}" = 0 ]; then return 0; fi
  echo "== $name $(date +%T)" >&2
  "$@" > "$OUT/$name.log" 2>&1 || { tail -20 "$OUT/$name.log" >&2; exit 1; }
}

# Issue 16, goals 1, 3 and 7: the three shipped/default models, served per server variant against
# the in-process ceiling (which plans batches with the server's planner).
step variants "${BENCH[@]}" --classify-bundle model-zoo/sst2-minilm-l3-int8 \
  --qa-bundle model-zoo/squad-minilm-l3-int8 --embed-bundle "$EMBED" \
  --workloads classify qa embed sweep --baselines ceiling --concurrency 1 32 --duration-s 8 \
  --requests 3000 --sweep-lengths 8 64 256 --no-compare-clients \
  --serve-variants baseline calibrate-batching no-allow-spinning "coalesce-tokenization tokenize-batch" \
    workers=2 "calibrate-batching no-allow-spinning coalesce-tokenization tokenize-batch" \
  --output "$OUT/variants.json" --markdown-output "$OUT/variants.md" --plot-dir "$OUT"
# Goals 2 and 5: the DistilBERT-size classifier against its ceiling and a PyTorch pipeline server.
step distilbert "${BENCH[@]}" --classify-bundle bundles/distilbert-size-int8 \
  --classify-source runs/bench/distilbert-size --workloads classify --baselines ceiling pytorch \
  --concurrency 1 32 --duration-s 10 --no-compare-clients --no-gemm-peak \
  --output "$OUT/distilbert.json" --markdown-output "$OUT/distilbert.md"
# Goal 4 and the cost of batch invariance: in-process speed of per-row against per-tensor int8.
step speed-distilbert "${EVAL[@]}" bundles/distilbert-size-int8 --dataset sst2 \
  --compare per-tensor=bundles/distilbert-size-int8-per-tensor --speed-rounds 3 \
  --output "$OUT/speed-distilbert.json"
step speed-sst2 "${EVAL[@]}" model-zoo/sst2-minilm-l3-int8 --dataset sst2 \
  --compare per-tensor=bundles/sst2-student-int8-per-tensor teacher-int8=bundles/sst2-teacher-int8 \
  --batch-invariance --speed-rounds 5 --output "$OUT/speed-sst2.json"
step speed-minilm "${EVAL[@]}" "$EMBED" --dataset stsb --compare per-tensor=bundles/minilm-int8-per-tensor \
  --batch-invariance --speed-rounds 3 --output "$OUT/speed-minilm.json"
# Goal 6: embeddings against infinity-emb, three alternating runs.
if [ -x .bench-venvs/infinity/bin/infinity_emb ]; then
  for round in 1 2 3; do
    step "infinity-$round" "${BENCH[@]}" --embed-bundle "$EMBED" --workloads embed \
      --baselines infinity --concurrency 32 --duration-s 10 --no-compare-clients --no-gemm-peak \
      --infinity-venv "$PWD/.bench-venvs/infinity" --output "$OUT/infinity-$round.json"
  done
fi
# Issue 13: the student against its teacher, both int8, served at 32 clients.
for model in student:model-zoo/sst2-minilm-l3-int8 teacher:bundles/sst2-teacher-int8; do
  step "served-${model%%:*}" "${BENCH[@]}" --classify-bundle "${model#*:}" --workloads classify \
    --baselines none --concurrency 32 --duration-s 10 --no-compare-clients --no-gemm-peak \
    --output "$OUT/served-${model%%:*}.json"
done
# Issue 15: one chatbot turn (classify + embed, then an answer over 5 passages).
step chat "${BENCH[@]}" --workloads chat --baselines none --concurrency 1 16 --duration-s 10 \
  --classify-bundle model-zoo/sst2-minilm-l3-int8 --qa-bundle model-zoo/squad-minilm-l3-int8 \
  --embed-bundle "$EMBED" --no-gemm-peak --output "$OUT/chat.json" --markdown-output "$OUT/chat.md"
# Issue 12: overload (capacity, flood, open loop at 5x) with liveness probes.
step overload "${BENCH[@]}" --overload --classify-bundle model-zoo/sst2-minilm-l3-int8 --workloads classify \
  --baselines none --requests 100000 --duration-s 20 --no-gemm-peak --output "$OUT/overload.json" \
  --markdown-output "$OUT/overload.md"
echo "== done $(date +%T)" >&2
