#!/usr/bin/env bash
# One call on the GPU machine (device tool): correctness first (the GPU k-means and snapshot tests
# against the CPU reference, then the small k-means cases under compute-sanitizer memcheck), then
# the 8B-shaped 128K-token ingestion benchmark, then the CPU reference on one head of that shape.
# Expects .kmeans-bundle/ (bench/kmeans_gpu/make_bundle.sh); logs go to $OUT.
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
  echo "exit $?"; grep -E "passed|failed|FAILED|skipped" "$OUT/$t.log" | tail -4
  grep -B3 -A20 "FAILED" "$OUT/$t.log" | head -60
done
echo "== memcheck (re-seeding, bf16 and error cases)"
timeout 40 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/kernels_kmeans_test" \
  "*re-seeds*","*rejects*" > "$OUT/memcheck.log" 2>&1
echo "exit $?"; tail -3 "$OUT/memcheck.log"
echo "== sqz_kmeans_gpu_bench"
timeout 90 "$B/sqz_kmeans_gpu_bench" > "$OUT/bench.log" 2>&1
echo "exit $?"; cat "$OUT/bench.log"
echo "== cpu reference, one head (seeding + 2 iterations)"
timeout 30 "$B/sqz_kmeans_gpu_bench" --cpu-head --iterations 2 > "$OUT/cpu_head.log" 2>&1
echo "exit $?"; cat "$OUT/cpu_head.log"
