// What storage_crash_writer writes for context i, shared with crash_test.cc (which recomputes it
// to check what survived a kill).
#pragma once

#include <string>
#include <vector>

#include "storage/test_util.h"

namespace sqz::crash {

inline constexpr int kContexts = 400;

inline std::string Id(int i) { return "c" + std::to_string(i); }

inline std::vector<int32_t> Tokens(int i) {
  return std::vector<int32_t>(static_cast<size_t>(64 + i % 50), i);
}

// Deterministic (the index builder is): the same i gives the same snapshot in both processes.
inline ContextSnapshot Snapshot(int i) {
  return testing::MakeSnapshot(static_cast<uint32_t>(1000 + i), 64 + i % 50, 2, 2, 16);
}

}  // namespace sqz::crash
