#!/usr/bin/env bash
# Builds the query-time Squeezed Attention tests, the dense kernel tests and the benchmark library
# here, and copies them with the one non-system, non-CUDA library they need (libgomp) into
# $BUNDLE (default .sqzgpu-bundle/) to copy to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${BUILD:-build-sqzgpu}"
cmake --build "$BUILD" --target kernels_cuda_squeeze_query_test kernels_cuda_test \
  sqz_squeeze_bench -j2
B="${BUNDLE:-.sqzgpu-bundle}"
rm -rf "$B" && mkdir -p "$B/lib"
cp "$BUILD/kernels/cuda/kernels_cuda_squeeze_query_test" "$BUILD/kernels/cuda/kernels_cuda_test" \
  "$BUILD/bench/squeeze_gpu/libsqz_squeeze_bench.so" "$B/"
cp "$(ldd "$BUILD/kernels/cuda/kernels_cuda_squeeze_query_test" | awk '/libgomp/ {print $3}')" \
  "$B/lib/"
du -sh "$B"
