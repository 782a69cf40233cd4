#!/usr/bin/env bash
# One run on the GPU machine: correctness first (the kernel tests, then the same
# under compute-sanitizer memcheck), then the benchmarks and the PyTorch SDPA baseline.
# Expects the binaries in .device-bundle/ (bench/cuda/make_bundle.sh builds it here) and writes
# logs under $OUT. Usage: bash bench/cuda/run_device.sh [tests|bench|all]
set -u
what="${1:-all}"
OUT="${OUT:-/tmp/sqz-out}"
mkdir -p "$OUT"
B=.device-bundle
export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv > "$OUT/nvidia-smi.csv" 2>&1
cat "$OUT/nvidia-smi.csv"
if [[ "$what" == all || "$what" == tests ]]; then
  echo "== kernels_cuda_test"
  timeout 120 "$B/kernels_cuda_test" --durations yes > "$OUT/test.log" 2>&1
  echo "exit $?"; grep -E "passed|failed|FAILED|skipped" "$OUT/test.log" | tail -5
  grep -B5 -A25 "FAILED" "$OUT/test.log" | head -80
  echo "== memcheck"
  timeout 170 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/kernels_cuda_test" \
    > "$OUT/memcheck.log" 2>&1
  echo "exit $?"; tail -4 "$OUT/memcheck.log"
fi
if [[ "$what" == all || "$what" == bench ]]; then
  echo "== sqz_cuda_bench"
  timeout 150 "$B/sqz_cuda_bench" all > "$OUT/bench.log" 2>&1
  echo "exit $?"; cat "$OUT/bench.log"
  echo "== sdpa"
  PYTHONUNBUFFERED=1 timeout 120 python3 bench/cuda/sdpa_bench.py > "$OUT/sdpa.log" 2>&1
  echo "exit $?"; cat "$OUT/sdpa.log"
fi
