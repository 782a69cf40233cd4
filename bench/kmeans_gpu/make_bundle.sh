#!/usr/bin/env bash
# Builds the GPU ingestion tests and benchmark here (build-kmeans) and copies them, with libgomp
# (the one non-system, non-CUDA library they need), into .kmeans-bundle/ to copy to the
# GPU machine. Then: bash bench/kmeans_gpu/run_device.sh on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${BUILD:-build-kmeans}"
cmake --build "$BUILD" --target kernels_kmeans_test squeeze_gpu_index_builder_test \
  sqz_kmeans_gpu_bench -j2
rm -rf .kmeans-bundle && mkdir -p .kmeans-bundle/lib
cp "$BUILD/kernels/cuda/kernels_kmeans_test" "$BUILD/kernels/cuda/squeeze_gpu_index_builder_test" \
  "$BUILD/bench/kmeans_gpu/sqz_kmeans_gpu_bench" .kmeans-bundle/
cp "$(ldd "$BUILD/kernels/cuda/squeeze_gpu_index_builder_test" | awk '/libgomp/ {print $3}')" \
  .kmeans-bundle/lib/
du -sh .kmeans-bundle
