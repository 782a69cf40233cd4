#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages, the Python test venv, the default
# model when it can be fetched), builds with CUDA when nvcc is present, and runs the whole suite.
#   scripts/run_tests.sh            all tests
#   scripts/run_tests.sh -R regex   a subset (arguments go to ctest)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
if [ -x scripts/fetch_model.sh ]; then
  scripts/fetch_model.sh || echo "run_tests: default model not available; tests that need it skip"
fi
scripts/build.sh
cd "${SQZ_BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 -j "${SQZ_TEST_JOBS:-2}" "$@"
