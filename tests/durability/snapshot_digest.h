// SnapshotDigest: a 64-bit digest of everything a ContextSnapshot holds, for comparing snapshots
// built or stored in different processes (the durability tests compare each stored READY snapshot
// with the one a clean run built from the same tokens).
//
// Every field goes in, in declaration order, each vector framed by its length, and floats by their
// bit patterns (so -0.0 and 0.0, or two NaN payloads, differ). Equal snapshots (operator==, for
// finite values) have equal digests; any change of a value, a length or a dimension changes the
// digest with probability 1 - 2^-64.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "engine/squeeze/snapshot.h"

namespace sqz::durability {

uint64_t SnapshotDigest(const ContextSnapshot& snapshot);
// The digest as 16 lowercase hex digits.
std::string SnapshotDigestHex(const ContextSnapshot& snapshot);

}  // namespace sqz::durability
