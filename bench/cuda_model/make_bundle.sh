#!/usr/bin/env bash
# Builds the CUDA backend's tests, the HF parity tool and the whole-model benchmark here and copies
# them, with libgomp and the tiny stories260K model (its config, weights and golden ids), into a
# bundle folder to copy to the GPU machine (the GPU machine has CUDA, cuBLAS and libstdc++, not
# /work/shared). Environment: BUILD (default build-cudab, configured with -DSQZ_CUDA=ON
# -DCMAKE_CUDA_ARCHITECTURES=90), B (bundle folder, default .cudab-bundle; git-ignored here).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${BUILD:-build-cudab}"
B="${B:-.cudab-bundle}"
bins=(engine/cuda/cuda_paged_sequences_test engine/cuda/cuda_backend_test
  engine/cuda/cuda_backend_graph_test engine/cuda/cuda_device_sampler_test
  tests/hf_parity_cuda/sqz-hf-logits bench/cuda_model/sqz_cuda_model_bench)
targets=()
for b in "${bins[@]}"; do targets+=("$(basename "$b")"); done
cmake --build "$BUILD" --target "${targets[@]}" -j2
rm -rf "$B" && mkdir -p "$B/lib" "$B/shared/models/stories260K"
for b in "${bins[@]}"; do cp "$BUILD/$b" "$B/"; done
cp "$(ldd "$BUILD/engine/cuda/cuda_backend_test" | awk '/libgomp/ {print $3}')" "$B/lib/"
M="${SQZ_SHARED_DIR:-$PWD/../shared}/models/stories260K"
if [[ -d "$M" ]]; then
  cp "$M/config.json" "$M/generation_config.json" "$M/model.safetensors" \
    "$M/golden_greedy_outputs.json" "$B/shared/models/stories260K/"
fi
grep -qx "/$B/" .git/info/exclude || echo "/$B/" >> .git/info/exclude
du -sh "$B"
