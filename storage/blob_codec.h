// Binary encoding of the blobs of a ContextSnapshot (storage/context_store.h).
//
// A blob is a 32-byte header followed by the payload:
//   magic "SQZB" | u32 format version | u32 kind | u32 encoding | u64 payload bytes | u64 XXH3-64
// Payloads are sequences of arrays, each a u64 element count followed by the little-endian
// elements. Kinds: kKv (sink, window and body K/V of one (layer, kv head)), kIndex (positions,
// centroids, counts, offsets, coarse level), kMeta (dims, options, thresholds; one per context).
// Encoding: 0 for every kind (elements as the snapshot holds them: fp32 K/V); a kKv blob may
// instead hold its K/V elements as bf16 (KvDType::kBf16, 1: half the bytes, rounded to nearest
// even). The checksum is XXH3-64 of the payload seeded with the encoding (seed 0 is plain XXH3-64),
// so a changed encoding field fails the checksum like a changed payload.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"
#include "engine/squeeze/snapshot.h"

namespace sqz::blob {

enum class Kind : uint32_t { kKv = 1, kIndex = 2, kMeta = 3 };
// Element type of the K/V arrays of a kKv blob (its header's encoding).
enum class KvDType : uint32_t { kF32 = 0, kBf16 = 1 };
inline constexpr size_t kHeaderBytes = 32;

// Header + payload.
std::string Seal(Kind kind, std::string_view payload, uint32_t encoding = 0);
// Seals in place a buffer whose first kHeaderBytes bytes were reserved for the header (the
// encoders below reserve them when asked): one pass over the payload (the checksum), no copy.
// Returns the payload's checksum.
uint64_t SealReserved(Kind kind, std::string* buffer, uint32_t encoding = 0);
// Checks the header (magic, version, kind, encoding, length) and the checksum; returns the payload
// and its checksum, and the encoding when asked. DATA_LOSS with `what` in the message on any
// mismatch, and for an encoding the kind does not have.
StatusOr<std::string_view> Open(std::string_view blob, Kind kind, const std::string& what,
                                uint64_t* checksum, uint32_t* encoding = nullptr);
uint64_t Checksum(std::string_view payload, uint32_t encoding = 0);

// bf16 rounding of a float (nearest even; NaN stays NaN), as the kBf16 encoding stores it.
float RoundToBf16(float x);
// Rounds every K/V element of the snapshot to bf16 in place: what a kBf16 store gives back.
void RoundKvToBf16(ContextSnapshot* snapshot);

// Payload encoders. With reserve_header, the result starts with kHeaderBytes bytes for
// SealReserved (the payload follows them).
std::string EncodeKv(const HeadIndex& head, bool reserve_header = false,
                     KvDType dtype = KvDType::kF32);
std::string EncodeIndex(const HeadIndex& head, bool reserve_header = false);
std::string EncodeMeta(const ContextSnapshot& snapshot, bool reserve_header = false);
// Decoders fill the parts of `head` / `snapshot` their blob holds. DATA_LOSS when malformed.
Status DecodeKv(std::string_view payload, HeadIndex* head, KvDType dtype = KvDType::kF32);
Status DecodeIndex(std::string_view payload, HeadIndex* head);
Status DecodeMeta(std::string_view payload, ContextSnapshot* snapshot);

}  // namespace sqz::blob
