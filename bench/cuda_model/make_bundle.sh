#!/usr/bin/env bash
# Builds the kernel tests (kernels_cuda_test), the CUDA backend's tests, the HF parity tool and the
# whole-model benchmark here and copies them, with libgomp and the tiny stories260K model (its
# config, weights and golden ids), into a bundle folder to copy to the GPU machine (the GPU machine
# has CUDA, cuBLAS and libstdc++, not /work/shared). Environment: BUILD (default build-cudab,
# configured with -DSQZ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90), B (bundle folder, default
# .cudab-bundle; git-ignored here), PACK=1 (store the bundle as one bundle.tar.xz, about a
# quarter of the size, for when the copy limit is tight; run_device.sh unpacks it).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${BUILD:-build-cudab}"
B="${B:-.cudab-bundle}"
bins=(kernels/cuda/kernels_cuda_test engine/cuda/cuda_paged_sequences_test
  engine/cuda/cuda_backend_test
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
EXCLUDE="$(git rev-parse --git-path info/exclude)"  # also right in a git worktree
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx "/$B/" "$EXCLUDE" 2>/dev/null || echo "/$B/" >> "$EXCLUDE"
if [[ "${PACK:-0}" == 1 ]]; then
  tar -C "$B" -cf - . | xz -6 -T2 > "$B.tar.xz.tmp"
  rm -rf "$B" && mkdir -p "$B" && mv "$B.tar.xz.tmp" "$B/bundle.tar.xz"
fi
du -sh "$B"
