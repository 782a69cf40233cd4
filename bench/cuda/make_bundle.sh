#!/usr/bin/env bash
# Builds the CUDA test and benchmark binaries here and copies them, with the one non-system,
# non-CUDA library they need (libgomp), into .device-bundle/ to copy to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${BUILD:-build-cuda}"
cmake --build "$BUILD" --target kernels_cuda_test sqz_cuda_bench -j2
rm -rf .device-bundle && mkdir -p .device-bundle/lib
cp "$BUILD/kernels/cuda/kernels_cuda_test" "$BUILD/bench/cuda/sqz_cuda_bench" .device-bundle/
cp "$(ldd "$BUILD/kernels/cuda/kernels_cuda_test" | awk '/libgomp/ {print $3}')" .device-bundle/lib/
du -sh .device-bundle
