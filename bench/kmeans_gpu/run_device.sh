#!/usr/bin/env bash
# One run on the GPU machine: correctness first (the GPU k-means and snapshot tests
# against the CPU reference, then small cases under compute-sanitizer memcheck and racecheck), the
# 8B-shaped 128K-token ingestion benchmark (early stop on, then always 20 iterations), then the
# CPU reference on one head of that shape. Expects .kmeans-bundle/ (make_bundle.sh); logs in $OUT.
# Usage: bash bench/kmeans_gpu/run_device.sh [diag]  (diag adds the seeding diagnostics)
set -u
OUT="${OUT:-/tmp/sqz-out}"
mkdir -p "$OUT"
B=.kmeans-bundle
export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv > "$OUT/nvidia-smi.csv" 2>&1
cat "$OUT/nvidia-smi.csv"
for t in kernels_kmeans_test squeeze_gpu_index_builder_test; do
  echo "== $t"
  timeout 60 "$B/$t" --durations yes > "$OUT/$t.log" 2>&1
  echo "exit $?"; grep -E "passed|failed" "$OUT/$t.log" | tail -2
  grep -A12 "FAILED" "$OUT/$t.log" | grep -E "expansion|objective|ARI|d=|<=|>=|==" | head -30
done
if [[ "${1:-}" == diag ]]; then
  echo "== diag"
  timeout 100 "$B/kernels_kmeans_test" "[diag]" > "$OUT/diag.log" 2>&1; echo "exit $?"
  grep -E "objective|argmax" "$OUT/diag.log" | head -14
fi
echo "== memcheck (small cases)"
timeout 40 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/kernels_kmeans_test" \
  "*re-seeds*","*rejects*","*lays out*" > "$OUT/memcheck.log" 2>&1
echo "exit $?"; tail -2 "$OUT/memcheck.log"
echo "== racecheck (re-seeding case)"
timeout 30 compute-sanitizer --tool racecheck --error-exitcode 9 "$B/kernels_kmeans_test" \
  "*re-seeds*" > "$OUT/racecheck.log" 2>&1
echo "exit $?"; tail -2 "$OUT/racecheck.log"
echo "== sqz_kmeans_gpu_bench (early stop)"
timeout 60 "$B/sqz_kmeans_gpu_bench" > "$OUT/bench.log" 2>&1
echo "exit $?"; cat "$OUT/bench.log"
echo "== sqz_kmeans_gpu_bench (20 iterations, no early stop)"
timeout 60 "$B/sqz_kmeans_gpu_bench" --tolerance 0 --reps 1 > "$OUT/bench_20.log" 2>&1
echo "exit $?"; grep -E "^run|total|achieved|goal" "$OUT/bench_20.log"
echo "== cpu reference, one head (seeding + 2 iterations)"
timeout 30 "$B/sqz_kmeans_gpu_bench" --cpu-head --iterations 2 > "$OUT/cpu_head.log" 2>&1
echo "exit $?"; cat "$OUT/cpu_head.log"
