// Host-side layout of a step's metadata before its one upload (context_step.cc,
// context_prefill.cc): arrays appended to a byte vector at aligned offsets, then viewed by type.
// Internal to engine/cuda. Thread safety: plain functions over caller-owned data.
#pragma once

#include <cstddef>
#include <vector>

namespace sqz::host_layout {

// bytes rounded up to a multiple of a.
inline size_t Align(size_t bytes, size_t a = 256) { return (bytes + a - 1) / a * a; }

// Appends `bytes` (at an offset aligned to `align`) to a host layout; returns that offset.
inline size_t Take(std::vector<char>* host, size_t bytes, size_t align = 8) {
  const size_t off = Align(host->size(), align);
  host->resize(off + bytes);
  return off;
}

// The array of X at byte offset off of the layout.
template <typename X>
X* At(std::vector<char>& host, size_t off) {
  return reinterpret_cast<X*>(host.data() + off);
}

}  // namespace sqz::host_layout
