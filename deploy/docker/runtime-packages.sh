#!/bin/sh
# Prints the Debian/Ubuntu packages that hold the shared libraries the given binaries load, one per
# line, sorted: the build stage of each image runs it so that the runtime stage installs exactly
# those packages (and nothing of the -dev world), whatever libraries the project links next.
#
#   runtime-packages.sh BINARY...
#
# Libraries under /usr/local/cuda* and the NVIDIA driver's libcuda/libnvidia-* are left out: the
# CUDA runtime base image and the container toolkit provide them. Fails, naming the library, when
# a library is missing or no package owns it (a library built by hand would not reach the image).
set -eu
[ "$#" -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }

owner() {
  # Debian 12 and Ubuntu 24.04 merged /lib into /usr/lib: dpkg knows one spelling of each path.
  for candidate in "$1" "$(readlink -f "$1")" "/usr$1" "${1#/usr}"; do
    pkg=$(dpkg-query -S "$candidate" 2>/dev/null | head -n1 | cut -d: -f1) || true
    if [ -n "$pkg" ]; then echo "$pkg"; return 0; fi
  done
  return 1
}

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for binary in "$@"; do
  [ -x "$binary" ] || { echo "runtime-packages: $binary is not an executable" >&2; exit 1; }
  if ldd "$binary" | grep -q "not found"; then
    echo "runtime-packages: $binary has unresolved libraries:" >&2
    ldd "$binary" | grep "not found" >&2
    exit 1
  fi
  ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' >> "$tmp"
done
for lib in $(sort -u "$tmp"); do
  case "$lib" in
    /usr/local/cuda*|*/libcuda.so*|*/libnvidia-*) continue ;;
  esac
  owner "$lib" || { echo "runtime-packages: no package owns $lib" >&2; exit 1; }
done | sort -u
