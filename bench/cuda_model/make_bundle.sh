#!/usr/bin/env bash
# Builds the CUDA backend's tests and benchmark here and copies them, with libgomp and the tiny
# stories260K model (its config, weights and golden ids), into .cudabackend-bundle/ for the device
# tool's `carry` (the GPU machine has CUDA, cuBLAS and libstdc++, not /work/shared).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${BUILD:-build-cudabackend}"
cmake --build "$BUILD" --target kernels_cuda_test cuda_paged_sequences_test cuda_backend_test \
  sqz_cuda_model_bench -j2
B=.cudabackend-bundle
rm -rf "$B" && mkdir -p "$B/lib" "$B/shared/models/stories260K"
cp "$BUILD/kernels/cuda/kernels_cuda_test" "$BUILD/engine/cuda/cuda_paged_sequences_test" \
  "$BUILD/engine/cuda/cuda_backend_test" "$BUILD/bench/cuda_model/sqz_cuda_model_bench" "$B/"
cp "$(ldd "$BUILD/engine/cuda/cuda_backend_test" | awk '/libgomp/ {print $3}')" "$B/lib/"
M="${SQZ_SHARED_DIR:-$PWD/../shared}/models/stories260K"
if [[ -d "$M" ]]; then
  cp "$M/config.json" "$M/generation_config.json" "$M/model.safetensors" \
    "$M/golden_greedy_outputs.json" "$B/shared/models/stories260K/"
fi
grep -qx '/.cudabackend-bundle/' .git/info/exclude || echo '/.cudabackend-bundle/' >> .git/info/exclude
du -sh "$B"
