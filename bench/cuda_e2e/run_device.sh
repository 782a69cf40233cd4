#!/usr/bin/env bash
# One run on the GPU machine, in the order that matters if time runs out:
#   1. correctness: host-side residency / planning / sequence tests, then the fixed-context tests of
#      the CUDA backend against the CPU backend (cuda_context_test), then the existing backend tests
#      (no regression from the context changes);
#   2. compute-sanitizer memcheck of the mixed-batch context case;
#   3. the end-to-end benchmark: a 2-layer, 8K smoke run, then the 8B shape over a 128K context
#      (ingestion on the device, DENSE vs SQUEEZED 0.125 at batch 1 and 32).
# Expects the bundle of make_bundle.sh ($B, default .gpuctx-bundle; a packed bundle.tar.xz in it is
# unpacked first; tests absent from it are skipped); logs go under $OUT. MEMCHECK=0 and SMOKE=0
# leave out steps 2 and the smoke run; TESTS picks the tests (name:timeout ...); E2E_ARGS adds
# flags to the full run.
# Usage (on the GPU machine, with .gpuctx-bundle copied beside the checkout; at most 600 s; the timeouts below add up to 565 s):
#   bash bench/cuda_e2e/run_device.sh [layers (default 32)] [context (default 131072)]
set -u
layers="${1:-32}"
context="${2:-131072}"
OUT="${OUT:-/tmp/sqz-out}"
B="${B:-.gpuctx-bundle}"
mkdir -p "$OUT"
if [[ -f "$B/bundle.tar.xz" ]]; then
  xz -dc "$B/bundle.tar.xz" | tar -C "$B" -xf - && rm -f "$B/bundle.tar.xz"
fi
export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export SQZ_SHARED_DIR="$PWD/$B/shared"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv,noheader 2>&1 | tee "$OUT/nvidia-smi.csv"
TESTS="${TESTS:-cuda_context_host_test:20 cuda_paged_sequences_test:20 cuda_context_test:90
  cuda_backend_test:45 cuda_backend_graph_test:45}"  # name:timeout in seconds, in order
for tt in $TESTS; do
  t="${tt%%:*}"
  [[ -x "$B/$t" ]] || { stamp "== $t: not in the bundle, skipped"; continue; }
  stamp "== $t"
  timeout "${tt##*:}" "$B/$t" --durations yes > "$OUT/$t.log" 2>&1; echo "exit $?"
  grep -A3 "warning:" "$OUT/$t.log" | grep -vE "^--|warning:|^$" | head -12
  grep -B4 -A14 "FAILED" "$OUT/$t.log" | head -80
  tail -2 "$OUT/$t.log" | head -1
done
if [[ "${MEMCHECK:-1}" == 1 ]]; then
  stamp "== memcheck (mixed batch of contexts)"
  timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_context_test" \
    "CudaBackend contexts: a batch mixing*" > "$OUT/memcheck.log" 2>&1; echo "exit $?"
  tail -3 "$OUT/memcheck.log"
fi
if [[ "${SMOKE:-1}" == 1 ]]; then
  stamp "== sqz_cuda_e2e_bench smoke (2 layers, 8K)"
  timeout 45 "$B/sqz_cuda_e2e_bench" --layers 2 --context 8192 --steps 8 \
    > "$OUT/e2e_smoke.log" 2>&1; echo "exit $?"
  tail -12 "$OUT/e2e_smoke.log"
fi
stamp "== sqz_cuda_e2e_bench --layers $layers --context $context ${E2E_ARGS:-}"
# shellcheck disable=SC2086  # E2E_ARGS is a list of flags
timeout 240 "$B/sqz_cuda_e2e_bench" --layers "$layers" --context "$context" ${E2E_ARGS:-} \
  > "$OUT/e2e.log" 2>&1; echo "exit $?"
tail -22 "$OUT/e2e.log"
stamp "done"
