#!/usr/bin/env bash
# One run on the GPU machine: correctness first (the query-time Squeezed Attention
# tests, then the dense kernel tests that share decode_attention.cu), then the benchmark.
# Expects $BUNDLE (default .sqzgpu-bundle/, from bench/squeeze_gpu/make_bundle.sh); logs under $OUT.
# Usage: bash bench/squeeze_gpu/run_device.sh [tests|bench|all|prefill|profile] [bench args...]
# prefill: the per-block selection and sparse prefill tests (plus the per-token selection tests
# that share the select kernel), a memcheck of the small ones, then bench.py --prefill.
# profile: Nsight Compute (clocks left alone) over the first launches of the scoring, selection and
# decode kernels in bench.py --select (the 128K batch-1 case comes first): duration, throughput,
# occupancy and the top stall reason of each (how run 10 found the selection's fetch stalls).
set -u
what="${1:-all}"
shift || true
OUT="${OUT:-/tmp/sqz-out}"
mkdir -p "$OUT"
B="${BUNDLE:-.sqzgpu-bundle}"
export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv > "$OUT/nvidia-smi.csv" 2>&1
cat "$OUT/nvidia-smi.csv"
if [[ "$what" == all || "$what" == tests ]]; then
  echo "== kernels_cuda_squeeze_query_test"
  timeout 100 "$B/kernels_cuda_squeeze_query_test" --durations yes > "$OUT/test_query.log" 2>&1
  echo "exit $?"; grep -E "passed|failed|FAILED|skipped" "$OUT/test_query.log" | tail -5
  grep -B5 -A30 "FAILED" "$OUT/test_query.log" | head -120
  echo "== memcheck (hand-made segment lists, budgets, hierarchical)"
  timeout 80 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$B/kernels_cuda_squeeze_query_test" \
    "Sparse DecodeAttention over hand-made*,SqueezeSelect budgets*,SqueezeSelect hierarchical*" \
    > "$OUT/memcheck.log" 2>&1
  echo "exit $?"; tail -3 "$OUT/memcheck.log"
  echo "== kernels_cuda_test [decode]"
  timeout 40 "$B/kernels_cuda_test" "*DecodeAttention*" > "$OUT/test_dense.log" 2>&1
  echo "exit $?"; grep -E "passed|failed|FAILED" "$OUT/test_dense.log" | tail -3
  grep -B5 -A25 "FAILED" "$OUT/test_dense.log" | head -60
fi
if [[ "$what" == prefill ]]; then
  echo "== kernels_cuda_squeeze_query_test (prefill and selection cases)"
  timeout 60 "$B/kernels_cuda_squeeze_query_test" --durations yes \
    "SqueezeSelect*,SparsePrefillAttention*,Squeezed prefill*" > "$OUT/test_prefill.log" 2>&1
  echo "exit $?"; grep -E "passed|failed|FAILED|skipped" "$OUT/test_prefill.log" | tail -5
  grep -E "^[0-9.]+ s: " "$OUT/test_prefill.log" | sort -rn | head -12
  grep -B5 -A30 "FAILED" "$OUT/test_prefill.log" | head -150
  echo "== memcheck (budget-1 squeezed prefill, block selection budgets)"
  timeout 30 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$B/kernels_cuda_squeeze_query_test" \
    "Squeezed prefill with kv_budget 1*,SqueezeSelect per query block: budgets*" \
    > "$OUT/memcheck_prefill.log" 2>&1
  echo "exit $?"; tail -3 "$OUT/memcheck_prefill.log"; grep -m5 -A8 "Invalid" "$OUT/memcheck_prefill.log"
  echo "== bench --prefill"
  PYTHONUNBUFFERED=1 timeout 120 python3 bench/squeeze_gpu/bench.py "$B/libsqz_squeeze_bench.so" \
    --prefill "$@" > "$OUT/bench_prefill.log" 2> "$OUT/bench_prefill.err"
  echo "exit $?"; cat "$OUT/bench_prefill.log"
  grep -v UserWarning "$OUT/bench_prefill.err" | grep -v _warn_once | tail -20
fi
if [[ "$what" == all || "$what" == bench ]]; then
  echo "== bench"
  nvidia-smi dmon -s c -d 1 > "$OUT/clocks.log" 2>&1 &
  dmon=$!
  PYTHONUNBUFFERED=1 timeout 180 python3 bench/squeeze_gpu/bench.py "$B/libsqz_squeeze_bench.so" "$@" \
    > "$OUT/bench.log" 2> "$OUT/bench.err"
  echo "exit $?"; kill "$dmon" 2>/dev/null
  cat "$OUT/bench.log"; grep -v UserWarning "$OUT/bench.err" | grep -v _warn_once | tail -20
  echo "SM clocks during the bench (MHz, min / median / max):"
  awk '$1 ~ /^[0-9]+$/ {print $3}' "$OUT/clocks.log" | sort -n | \
    awk '{a[NR]=$1} END {if (NR) print a[1], a[int((NR+1)/2)], a[NR]}'
fi
if [[ "$what" == profile ]]; then
  echo "== ncu over bench.py --select"
  PYTHONUNBUFFERED=1 timeout 400 ncu --clock-control none \
    -k "regex:GroupedScore|ScoreKernel|ClusterSelect|SelectKernel|DecodeMmaChunk" --launch-count 9 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis \
    python3 bench/squeeze_gpu/bench.py "$B/libsqz_squeeze_bench.so" --select "$@" \
    > "$OUT/ncu.log" 2>&1
  echo "exit $?"
  grep -E "^  [A-Za-z_].*\(|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|SM Active|Warp Cycles Per Issued|cycles being stalled" "$OUT/ncu.log" | head -120
fi
