#!/usr/bin/env bash
# Builds the fixed-context tests of the CUDA backend and the end-to-end benchmark here and copies
# them, with libgomp and the tiny stories260K model, into a bundle folder to copy to the GPU
# machine (which has CUDA, cuBLAS and libstdc++, not the shared test models).
# Environment: BUILD (default build-gpuctx, configured with -DSQZ_CUDA=ON
# -DCMAKE_CUDA_ARCHITECTURES=90 -DSQZ_BUILD_SERVER=OFF), B (bundle folder, default
# .gpuctx-bundle; git-ignored here), BINS (the binaries, default all below), PACK=1 (store the
# bundle as one bundle.tar.xz, a quarter of the size, for when the copy limit is tight;
# run_device.sh unpacks it).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${BUILD:-build-gpuctx}"
B="${B:-.gpuctx-bundle}"
default_bins="engine/cuda/cuda_context_host_test engine/cuda/cuda_paged_sequences_test
  engine/cuda/cuda_context_test engine/cuda/cuda_backend_test engine/cuda/cuda_backend_graph_test
  bench/cuda_e2e/sqz_cuda_e2e_bench"
# shellcheck disable=SC2206  # split on white space on purpose
bins=(${BINS:-$default_bins})
targets=()
for b in "${bins[@]}"; do targets+=("$(basename "$b")"); done
cmake --build "$BUILD" --target "${targets[@]}" -j2
rm -rf "$B" && mkdir -p "$B/lib" "$B/shared/models/stories260K"
for b in "${bins[@]}"; do cp "$BUILD/$b" "$B/" && strip "$B/$(basename "$b")"; done
cp "$(ldd "$BUILD/engine/cuda/cuda_context_test" | awk '/libgomp/ {print $3}')" "$B/lib/"
M="${SQZ_SHARED_DIR:-$PWD/../shared}/models/stories260K"
if [[ -d "$M" ]]; then
  cp "$M/config.json" "$M/generation_config.json" "$M/model.safetensors" \
    "$M/golden_greedy_outputs.json" "$B/shared/models/stories260K/"
fi
grep -qx "/$B/" .git/info/exclude || echo "/$B/" >> .git/info/exclude
if [[ "${PACK:-0}" == 1 ]]; then
  tar -C "$B" -cf - . | xz -6 -T2 > "$B.tar.xz.tmp"
  rm -rf "$B" && mkdir -p "$B" && mv "$B.tar.xz.tmp" "$B/bundle.tar.xz"
fi
du -sh "$B"
