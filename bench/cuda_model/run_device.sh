#!/usr/bin/env bash
# One call on the GPU machine (device tool): correctness first (the host-side sequence table, the
# new kernels of kernels/cuda/model_ops against the CPU, the CUDA backend against the CPU backend
# and stories260K's golden ids), then the whole-model benchmark, then memcheck of the new kernels.
# Expects .cudabackend-bundle/ (bench/cuda_model/make_bundle.sh) and writes logs under $OUT.
# Usage: bash bench/cuda_model/run_device.sh [layers (default 32)]
set -u
layers="${1:-32}"
OUT="${OUT:-/tmp/sqz-out}"
mkdir -p "$OUT"
B=.cudabackend-bundle
export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export SQZ_SHARED_DIR="$PWD/$B/shared"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv > "$OUT/nvidia-smi.csv" 2>&1
cat "$OUT/nvidia-smi.csv"
ops='Gemv*,EmbedToFloat*,AddRmsNorm*,AddToFloat*,WritePagedKv*,PagedAttentionSimple*,MatMulTransBF32*,FillUniform*'
echo "== cuda_paged_sequences_test"
timeout 30 "$B/cuda_paged_sequences_test" > "$OUT/paged.log" 2>&1; echo "exit $?"
tail -2 "$OUT/paged.log"
echo "== kernels_cuda_test (model_ops)"
timeout 90 "$B/kernels_cuda_test" "$ops" > "$OUT/ops.log" 2>&1; echo "exit $?"
grep -B3 -A12 "FAILED" "$OUT/ops.log" | head -60; tail -2 "$OUT/ops.log"
echo "== cuda_backend_test"
timeout 120 "$B/cuda_backend_test" --durations yes > "$OUT/backend.log" 2>&1; echo "exit $?"
grep -A2 "warning:" "$OUT/backend.log" | grep -vE "^--|warning:" | head -20
grep -B4 -A14 "FAILED" "$OUT/backend.log" | head -80; grep -E "s: CudaBackend" "$OUT/backend.log"
tail -2 "$OUT/backend.log"
echo "== sqz_cuda_model_bench --layers $layers"
timeout 150 "$B/sqz_cuda_model_bench" --layers "$layers" > "$OUT/bench.log" 2>&1
rc=$?; echo "exit $rc"; cat "$OUT/bench.log"
if [[ $rc -ne 0 && "$layers" != 2 ]]; then
  echo "== sqz_cuda_model_bench --layers 2 (fallback)"
  timeout 60 "$B/sqz_cuda_model_bench" --layers 2 > "$OUT/bench2.log" 2>&1; echo "exit $?"
  cat "$OUT/bench2.log"
fi
echo "== memcheck (model_ops tests)"
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/kernels_cuda_test" "$ops" \
  > "$OUT/memcheck.log" 2>&1; echo "exit $?"; tail -3 "$OUT/memcheck.log"
