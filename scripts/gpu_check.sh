#!/usr/bin/env bash
# One prepared command for an accelerator session: MPS training-step throughput per
# contraction method (samples/s, GFLOP/s, fraction of the device's float32 GEMM rate),
# first-step compile times, and student-vs-teacher inference latency. Also runs on CPU.
#
#   bash scripts/gpu_check.sh            # full check (about 5-8 minutes on one GPU)
#   bash scripts/gpu_check.sh --quick    # tiny shapes: tests the script itself on CPU (~1-2 min)
#
# Results (JSON + the log) go to $OUT if it is set (the device machine's output folder),
# else to bench_results/gpu_check/. Exit status: non-zero if any benchmark failed.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
DEST="${OUT:-bench_results/gpu_check}"
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

if [ $QUICK = 1 ]; then
  SHAPES=(--shape 64,2,8,10,32 --shape 128,3,8,10,64)
  STEPS=(--steps 3 --min-steps 2 --budget-s 2)
  COMPILE=64,256
  INF=(--batch 1,32 --rounds 20)
  FORCED=(--batch 1,32 --rounds 10)
else
  SHAPES=(--shape 784,3,10,10,500 --shape 196,2,32,10,256 --shape 784,2,64,10,128 --shape 196,2,20,10,128)
  STEPS=(--steps 20 --min-steps 5 --budget-s 4)
  COMPILE=196,784,4096
  INF=(--batch 1,256,4096 --rounds 200)
  FORCED=(--batch 1,256,4096 --rounds 100)
fi

status=0
run() {  # run NAME CMD...: log the command and its output, remember failures
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$LOG"
  if ! "$@" 2>&1 | grep -v -E "^\s*$|UserWarning|warnings.warn" | tee -a "$LOG"; then
    echo "!!! $name failed" | tee -a "$LOG"; status=1
  fi
}

: > "$LOG"
{ date -u; uname -a; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"; } | tee -a "$LOG"
run devices "$PY" -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices(), 'matmul precision:', jax.config.jax_default_matmul_precision)"
# most important first: a run cut short by the device's time limit keeps what it finished
run inference "$PY" scripts/bench_inference.py "${INF[@]}" --json "$DEST/inference.json"
run flops "$PY" scripts/bench_contraction.py --flops-table "${SHAPES[@]}" --methods scan,tree,chunked \
  "${STEPS[@]}" --json "$DEST/flops_table.json"
run compile "$PY" scripts/bench_contraction.py --compile-times "$COMPILE" --json "$DEST/compile_times.json"
# the automatic rules' accelerator branches (tn.mps.choose_method / choose_planned: "tree" or
# "chunked"; tn.tt.choose_tt_method: "dense") against the other methods, forced, at inference
for pair in scan,cores tree,split chunked,dense; do
  run "inference-${pair/,/-}" "$PY" scripts/bench_inference.py "${FORCED[@]}" \
    --mps-contraction "${pair%,*}" --tt-method "${pair#*,}" --json "$DEST/inference_${pair/,/_}.json"
done
echo "=== done (status $status); results in $DEST" | tee -a "$LOG"
exit $status
