#!/usr/bin/env bash
# Configures and builds Squeeze into build/ (or $SQZ_BUILD_DIR). Extra arguments go to CMake's
# configure step, e.g. scripts/build.sh -DSQZ_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SQZ_BUILD_DIR:-build}
JOBS=${SQZ_JOBS:-$(nproc)}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
