#!/usr/bin/env bash
# The main job: sets everything up, starts squeezed with the default configuration on loopback and
# shows that it serves (health and server info), then stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
if [ -x scripts/fetch_model.sh ]; then scripts/fetch_model.sh; fi
scripts/build.sh
BUILD_DIR=${SQZ_BUILD_DIR:-build}
exec .venv/bin/python tools/demo/demo.py --squeezed "$BUILD_DIR/server/squeezed" \
  --stubs "$BUILD_DIR/python" --config config/squeezed.yaml "$@"
