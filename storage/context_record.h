// ContextRecord: what the store keeps about one registered context (the "records" column family
// of storage/context_store.h), and its on-disk encoding.
//
// Encoding: one JSON object (nlohmann_json), self-describing and versioned:
//   {"format_version": 1, "id": "...", "state": 6, "progress": 1.0,
//    "model_fingerprint": 123, "model": {"config_summary": "...", "tensors_digest": ...,
//    "weights_digest": ..., "format_version": 1},
//    "token_count": 421, "content_digest": "hex", "options": {SqueezeOptions fields by name},
//    "owner": "...", "labels": {"k": "v"}, "pinned": false, "create_time_ms": ...,
//    "update_time_ms": ..., "error": "...", "stored_bytes": ..., "resident_bytes": ...,
//    "thresholds": [floats],
//    "manifest": [{"key": "0/1/kv", "checksum": u64, "bytes": u64}, ...]}
// Integers are exact (u64 stays u64). A record with a newer format_version is refused
// (FAILED_PRECONDITION); a malformed one is DATA_LOSS naming the context.
//
// Thread safety: plain values and pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/squeeze/snapshot.h"
#include "storage/fingerprint.h"

namespace sqz {

// Numbered as squeeze.v1.ContextState, in the order a context goes through them.
enum class ContextState : int32_t {
  kQueued = 1,
  kPrefilling = 2,
  kClustering = 3,
  kCalibrating = 4,
  kPersisting = 5,
  kReady = 6,
  kFailed = 7,
  kDeleting = 8,  // internal: a deletion in progress (never listed)
};
std::string_view ContextStateName(ContextState state);
// QUEUED .. PERSISTING: ingestion has not finished; Recover() reports these for re-ingestion.
inline bool IsIngesting(ContextState s) {
  return s >= ContextState::kQueued && s <= ContextState::kPersisting;
}

// INVALID_ARGUMENT unless 1..256 bytes without NUL or other ASCII control characters.
Status ValidateContextId(std::string_view id);

struct BlobEntry {
  std::string key;        // "L/H/kv", "L/H/index" or "meta", for humans and messages
  uint64_t checksum = 0;  // XXH3-64 of the payload
  uint64_t bytes = 0;     // payload length
  bool operator==(const BlobEntry&) const = default;
};

struct ContextRecord {
  std::string id;
  ContextState state = ContextState::kQueued;
  double progress = 0.0;  // of the current state, 0..1
  // The model the KV belongs to: a 64-bit fingerprint (staleness is decided on it: the engine's
  // LoadedModel::fingerprint or ModelIdentity::Hash()), and optionally its parts for messages
  // (when model.config_summary is set, model_fingerprint must equal model.Hash()).
  uint64_t model_fingerprint = 0;
  ModelIdentity model;
  int64_t token_count = 0;
  std::string content_digest;  // hex digest of the token ids (idempotent re-registration)
  SqueezeOptions options;
  std::string owner;  // API key id; "" without auth
  std::map<std::string, std::string> labels;
  bool pinned = false;
  int64_t create_time_ms = 0;  // Unix ms; set by CreateRecord when 0
  int64_t update_time_ms = 0;  // Unix ms; set by every write
  std::string error;           // FAILED: why; after MarkStale: why it is re-ingested
  // Filled by PutSnapshot: payload bytes of all blobs, the calibrated global thresholds
  // ([kNumGqaReduce][kNumSparsities], as ContextSnapshot::thresholds_global) and the manifest.
  int64_t stored_bytes = 0;
  // Also filled by PutSnapshot: the snapshot's bytes in memory once loaded (SnapshotBytes), which
  // differ from stored_bytes when K/V are stored in bf16. 0 in records written before it existed
  // (the key is optional: older builds ignore it, this one reads its absence as 0).
  int64_t resident_bytes = 0;
  std::vector<float> thresholds;
  std::vector<BlobEntry> manifest;  // READY: every blob's checksum
  bool operator==(const ContextRecord&) const = default;
};

// The version EncodeRecord writes; DecodeRecord reads it and every older one.
inline constexpr int32_t kRecordFormatVersion = 1;

std::string EncodeRecord(const ContextRecord& record);
// `id` is the key the record was stored under (for messages; it must match the stored id).
StatusOr<ContextRecord> DecodeRecord(const std::string& id, std::string_view text);
// INVALID_ARGUMENT when record.model is filled (config_summary set) and its Hash() differs from
// record.model_fingerprint.
Status ValidateModel(const ContextRecord& record);

}  // namespace sqz
