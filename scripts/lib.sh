# shellcheck shell=bash
# Shell helpers shared by the build scripts (sourced, not run). timed and run_queued expect $RUNS
# to be set.

# parse_ship_reuse_args HELP_LAST_LINE ARG...: the flags of the reader and reranker builds:
# --ship (copy the result into model-zoo/: SHIP=1), --reuse (keep trained checkpoints: REUSE=1),
# -h/--help (print the script's header, lines 2 to HELP_LAST_LINE); anything else exits 2.
parse_ship_reuse_args() {
  local help_last_line=$1 arg
  shift
  SHIP=0
  REUSE=0
  for arg in "$@"; do
    case "$arg" in
      --ship) SHIP=1 ;;
      --reuse) REUSE=1 ;;
      -h|--help) sed -n "2,${help_last_line}p" "$0"; exit 0 ;;
      *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
  done
}

# timed NAME COMMAND...: run with its output in $RUNS/NAME.log, then print the log's last lines
# (progress lines left out) and the time taken. A failure prints the tail and exits the script.
timed() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name: $*" >&2
  if ! "$@" > "$RUNS/$name.log" 2>&1; then
    tail -n 30 "$RUNS/$name.log" >&2
    echo "== $name failed; the whole log is $RUNS/$name.log" >&2
    exit 1
  fi
  grep -v 'train:' "$RUNS/$name.log" | tail -n 15 >&2
  echo "== $name took $((SECONDS - start)) s" >&2
}

# sweep NAME... -- runs the commands queued with queue_run, PARALLEL at a time (default 1), each
# under `timeout $TIME_LIMIT_S` when that is set, and never past DEADLINE (seconds since the epoch). A run stopped by the time limit still counts when
# it left a checkpoint (the trainer writes the best one at every improvement); any other failure
# exits the script. Queue with: queue_run NAME COMMAND...
declare -a SWEEP_NAMES=() SWEEP_COMMANDS=()
queue_run() {
  local name=$1
  shift
  SWEEP_NAMES+=("$name")
  SWEEP_COMMANDS+=("$(printf '%q ' "$@")")
}
run_queued() {
  local parallel=${PARALLEL:-1} limit=${TIME_LIMIT_S:-} start=$SECONDS i failed=0
  for i in "${!SWEEP_NAMES[@]}"; do
    local name=${SWEEP_NAMES[$i]} command=${SWEEP_COMMANDS[$i]}
    local run_limit=$limit
    if [ -n "${DEADLINE:-}" ]; then  # an absolute end (date +%s) caps every run's limit
      local left=$((DEADLINE - $(date +%s)))
      if [ "$left" -le 0 ]; then echo "== $name: no time left before DEADLINE" >&2; left=1; fi
      if [ -z "$run_limit" ] || [ "$left" -lt "$run_limit" ]; then run_limit=$left; fi
    fi
    if [ -n "$run_limit" ]; then command="timeout $run_limit $command"; fi
    echo "== $name: $command" >&2
    rm -f "$RUNS/$name.rc"
    ( rc=0; bash -c "$command" > "$RUNS/$name.log" 2>&1 || rc=$?; echo "$rc" > "$RUNS/$name.rc" ) &
    while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || true; done
  done
  wait
  for name in "${SWEEP_NAMES[@]}"; do
    local rc
    rc=$(cat "$RUNS/$name.rc" 2>/dev/null || echo 1)
    if [ "$rc" -eq 124 ]; then
      echo "== $name stopped at its time limit; its best checkpoint so far is kept" >&2
    elif [ "$rc" -ne 0 ]; then
      tail -n 20 "$RUNS/$name.log" >&2
      echo "== $name failed (exit $rc); the whole log is $RUNS/$name.log" >&2
      failed=1
    fi
  done
  SWEEP_NAMES=() SWEEP_COMMANDS=()
  echo "== sweep took $((SECONDS - start)) s" >&2
  [ "$failed" -eq 0 ] || exit 1
}

# ship_bundle BUNDLE ZOO [RECORD...]: refresh a shipped bundle in ZOO from BUNDLE: the bundle's own
# files, the teacher's and the student's training records ($RUNS/teacher, $RUNS/student), and
# the given records. MODEL_CARD.md is hand-written and stays.
ship_bundle() {
  local bundle=$1 zoo=$2
  shift 2
  mkdir -p "$zoo"
  cp "$bundle"/distilserve.json "$bundle"/model.onnx "$bundle"/tokenizer.json "$zoo"/
  cp "$RUNS/teacher/training.json" "$zoo/training-teacher.json"
  cp "$RUNS/student/training.json" "$zoo/training-student.json"
  if [ $# -gt 0 ]; then cp "$@" "$zoo"/; fi
  echo "refreshed $zoo; update the figures in $zoo/MODEL_CARD.md from $zoo/eval.json" >&2
}
