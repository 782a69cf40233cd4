#!/usr/bin/env bash
# Sets up the Hugging Face oracle for tests/gguf/hf_parity.py on a CPU-only Debian 12 machine:
# Debian's python3-torch (1.13.1, CPU) and libopenblas0-pthread, plus a virtual environment that
# sees torch (--system-site-packages) with transformers, tokenizers, gguf, accelerate and jinja2
# from PyPI, pinned below. The venv gets a .gitignore of its own ('*'), so git leaves it alone.
#
# Too heavy for CI (torch is ~900 MB), so none of this is in requirements-test.txt; hf_parity.py is
# run by hand (docs/benchmarks/gguf.md says how and records its results).
#
# Usage: tests/gguf/hf_parity_setup.sh
# Environment: SQZ_HF_VENV (default <repo>/.venv-hf). The two apt-get installs need root (or a
# machine where the packages are installed already). About 2 minutes and ~1 GB the first time.
# Idempotent: when everything is present it only checks the versions and returns. Prints the
# venv's python as the last line of stdout; exit status 1 with a message on failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${SQZ_HF_VENV:-$ROOT/.venv-hf}

# transformers 4.46.3 (November 2024) reads GGUF files (llama architecture, Q4_1 / Q8_0 blocks
# through gguf-py's dequantize, the "gpt2" tokenizer) when gguf >= 0.10 and accelerate are
# installed, and it was checked to run on Debian's torch 1.13 (later releases move towards
# torch 2). tokenizers 0.20.3 is in the range it accepts; accelerate 0.34.2 is of the same era;
# jinja2 renders the chat template stored in the GGUF (apply_chat_template).
# numpy < 2: Debian's torch 1.13 is built against numpy 1.x.
PINS=(
  "transformers==4.46.3"
  "tokenizers==0.20.3"
  "gguf==0.10.0"
  "accelerate==0.34.2"
  "jinja2==3.1.4"
  "numpy<2"
)

log() { echo "hf_parity_setup: $*" >&2; }
die() { log "$*"; exit 1; }

if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  [ "$(id -u)" = 0 ] || die "Debian's python3-torch is missing; run as root or: apt-get install -y python3-torch"
  log "installing Debian's python3-torch (CPU, ~900 MB, about a minute)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq python3-torch python3-venv >&2 ||
    { apt-get update -qq >&2 && apt-get install -y -qq python3-torch python3-venv >&2; } ||
    die "apt-get install python3-torch failed"
fi

# Debian's torch calls the system's libblas.so.3, by default the reference BLAS (~2 GFLOP/s here:
# transformers then needs minutes per prompt). hf_parity.py puts OpenBLAS's copy first on
# LD_LIBRARY_PATH for itself (~110 GFLOP/s); the system-wide libblas/liblapack choice is left as
# it was, so nothing else on the machine changes numerics.
OPENBLAS_DIR=/usr/lib/x86_64-linux-gnu/openblas-pthread
if [ ! -e "$OPENBLAS_DIR/libblas.so.3" ]; then
  [ "$(id -u)" = 0 ] || die "OpenBLAS is missing; run as root or: apt-get install -y libopenblas0-pthread"
  alts=(libblas.so.3-x86_64-linux-gnu liblapack.so.3-x86_64-linux-gnu)
  declare -A was
  for a in "${alts[@]}"; do
    was[$a]=$(update-alternatives --query "$a" 2>/dev/null | awk '/^Value:/{print $2}') || true
  done
  log "installing Debian's libopenblas0-pthread"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >&2 ||
    die "apt-get install libopenblas0-pthread failed"
  for a in "${alts[@]}"; do
    if [ -n "${was[$a]}" ]; then update-alternatives --set "$a" "${was[$a]}" >&2; fi
  done
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV (--system-site-packages, so it sees Debian's torch)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV" || die "python3 -m venv failed"
fi
# Keep the venv out of git without touching the repository's .gitignore.
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"

check() {
  "$VENV/bin/python" - <<'EOF' 2>/dev/null
import accelerate, gguf, jinja2, numpy, tokenizers, torch, transformers
from importlib.metadata import version
want = {"transformers": "4.46.3", "tokenizers": "0.20.3", "gguf": "0.10.0",
        "accelerate": "0.34.2", "jinja2": "3.1.4"}
bad = [k for k, v in want.items() if version(k) != v]
assert not bad and int(numpy.__version__.split(".")[0]) < 2, bad
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"tokenizers {tokenizers.__version__}, gguf {version('gguf')}, "
      f"accelerate {accelerate.__version__}, numpy {numpy.__version__}")
EOF
}

if ! versions=$(check); then
  log "installing ${PINS[*]} into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}" >&2 || die "pip install failed"
  versions=$(check) || die "installed, but the versions check still fails: run $VENV/bin/python -c 'import transformers'"
fi
log "ready: $versions"
echo "$VENV/bin/python"
