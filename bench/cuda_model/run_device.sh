#!/usr/bin/env bash
# One run on the GPU machine, in the order that matters if time runs out:
#   1. correctness: the Gemv kernel tests (CPU reference, PDL in graphs), the host-side sequence
#      table, DeviceSampler vs the CPU Sampler, CUDA graphs /
#      ForwardSample / bf16 batch (in)variance, the backend vs the CPU backend and stories260K;
#   2. parity with Hugging Face transformers (tests/hf_parity_cuda/hf_parity_cuda.py: random
#      2-layer Llama-3-8B, Llama-2-7B and Qwen2-7B shapes, 512 positions);
#   3. the whole-model benchmark (Llama-3-8B shape, `layers` layers);
#   4. compute-sanitizer memcheck of the DeviceSampler greedy/penalty case.
# Expects the bundle of make_bundle.sh ($B, default .cudab-bundle; a packed bundle.tar.xz in it is
# unpacked first); logs go under $OUT.
# Usage: bash bench/cuda_model/run_device.sh [layers (default 32)]
set -u
layers="${1:-32}"
OUT="${OUT:-/tmp/sqz-out}"
B="${B:-.cudab-bundle}"
mkdir -p "$OUT"
if [[ -f "$B/bundle.tar.xz" ]]; then
  xz -dc "$B/bundle.tar.xz" | tar -C "$B" -xf - && rm -f "$B/bundle.tar.xz"
fi
export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export SQZ_SHARED_DIR="$PWD/$B/shared"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv,noheader 2>&1 | tee "$OUT/nvidia-smi.csv"
stamp "== kernels_cuda_test [Gemv]"
timeout 120 "$B/kernels_cuda_test" "*Gemv*" --durations yes > "$OUT/gemv_test.log" 2>&1
echo "exit $?"; grep -B4 -A14 "FAILED" "$OUT/gemv_test.log" | head -60; tail -2 "$OUT/gemv_test.log"
for t in cuda_paged_sequences_test cuda_device_sampler_test cuda_backend_graph_test \
  cuda_backend_test; do
  stamp "== $t"
  timeout 30 "$B/$t" --durations yes > "$OUT/$t.log" 2>&1; echo "exit $?"
  grep -A3 "warning:" "$OUT/$t.log" | grep -vE "^--|warning:|^$" | head -12
  grep -B4 -A14 "FAILED" "$OUT/$t.log" | head -60
  tail -2 "$OUT/$t.log" | head -1
done
stamp "== HF parity"
timeout 100 python3 tests/hf_parity_cuda/hf_parity_cuda.py --tool "$B/sqz-hf-logits" \
  --tool-timeout 60 --out-json "$OUT/parity.json" > "$OUT/parity.log" 2>&1; echo "exit $?"
grep -vE "^\s+File|^\s+\^" "$OUT/parity.log" | tail -40
stamp "== sqz_cuda_model_bench --layers $layers"
timeout 90 "$B/sqz_cuda_model_bench" --layers "$layers" > "$OUT/bench.log" 2>&1; echo "exit $?"
grep -E "^(Gemv plan|linear|qkv|o |gate_up|down|lm_head|one decode)" "$OUT/bench.log"
grep -vE "^(Gemv plan|linear|qkv|o |gate_up|down|lm_head|one decode| +us)" "$OUT/bench.log" | tail -16
stamp "== memcheck (Gemv with PDL, in a graph)"
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/kernels_cuda_test" \
  "Gemv launched as a programmatic dependent*" > "$OUT/memcheck_gemv.log" 2>&1; echo "exit $?"
tail -2 "$OUT/memcheck_gemv.log"
stamp "== memcheck (DeviceSampler greedy + penalties)"
timeout 20 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_device_sampler_test" \
  "DeviceSampler greedy*" > "$OUT/memcheck.log" 2>&1; echo "exit $?"; tail -2 "$OUT/memcheck.log"
stamp "done"
