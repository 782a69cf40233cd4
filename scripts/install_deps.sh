#!/usr/bin/env bash
# Installs every Debian package Squeeze needs to build, test and run, and the Python test tooling
# into a virtual environment (.venv) from the pinned requirements file. Idempotent: when everything
# is present it returns in a few seconds without touching the network.
#
# Usage: scripts/install_deps.sh [--no-venv]
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config git ca-certificates
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libspdlog-dev libyaml-cpp-dev catch2 libsentencepiece-dev
  nlohmann-json3-dev libcli11-dev libpcre2-dev libxxhash-dev zlib1g-dev
  python3 python3-venv python3-grpcio python3-numpy python3-sentencepiece
  python3-protobuf nginx-light
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install_deps: all Debian packages present"
fi

if [ "${1:-}" != "--no-venv" ]; then
  VENV=.venv
  stamp="$VENV/.requirements.sha256"
  want=$(sha256sum requirements-test.txt | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "install_deps: creating $VENV from requirements-test.txt"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-test.txt
    echo "$want" > "$stamp"
  else
    echo "install_deps: $VENV up to date"
  fi
fi
