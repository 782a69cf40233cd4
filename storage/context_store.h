// ContextStore: the RocksDB store of registered contexts (DESIGN.md, "Storage").
//
// Column families:
//   records  id -> ContextRecord (JSON with a format version)
//   tokens   id -> the registration's token ids (little-endian int32)
//   kv       id \0 layer head kind -> K/V blob of one (layer, kv head)       (BlobDB)
//   index    id \0 layer head kind -> index blob of one (layer, kv head), and the meta blob (BlobDB)
// Every blob value carries a header (magic, format version, kind, payload length, XXH3-64 of the
// payload); the record's manifest lists each blob's checksum. Keys of one context are one
// contiguous range, so deletion is one DeleteRange per family.
//
// Durability protocol:
//   * CreateRecord writes the record (QUEUED) and the tokens in one synced batch: once it returns,
//     the registration survives a crash.
//   * PutSnapshot writes the blobs (not synced); CommitReady syncs the WAL and then flips the record
//     to READY with the blob manifest in one synced write. A context is READY only after that write.
//   * Delete writes DELETING (synced), range-deletes the blobs and tokens, then removes the record
//     (synced). Recover() finishes deletions a crash interrupted, so a deleted context never comes
//     back, and lists contexts caught mid-ingestion so the caller can re-ingest them from tokens.
//   * LoadSnapshot verifies every blob against its header and the manifest: a mismatch is DATA_LOSS
//     naming the context, layer, head and blob kind; corrupt data is never returned.
//
// Thread safety: all methods are thread-safe (RocksDB is). The caller serialises operations on one
// context id (the registry does).
#pragma once

#include <rocksdb/db.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/squeeze/snapshot.h"
#include "storage/store_options.h"

namespace sqz {

// Numbered as squeeze.v1.ContextState.
enum class ContextState : int32_t {
  kQueued = 1,
  kPrefilling = 2,
  kClustering = 3,
  kCalibrating = 4,
  kPersisting = 5,
  kReady = 6,
  kFailed = 7,
  kDeleting = 8,  // internal: a deletion in progress (never shown to clients)
};
std::string_view ContextStateName(ContextState state);

struct BlobEntry {
  std::string key;         // "L/H/kind" for humans and messages
  uint64_t checksum = 0;   // XXH3-64 of the payload
  uint64_t bytes = 0;
  bool operator==(const BlobEntry&) const = default;
};

struct ContextRecord {
  std::string id;
  ContextState state = ContextState::kQueued;
  double progress = 0.0;
  uint64_t model_fingerprint = 0;  // the model the KV belongs to
  int64_t token_count = 0;
  std::string content_digest;      // hex digest of the token ids (idempotent re-registration)
  SqueezeOptions options;
  std::string owner;               // API key name; "" without auth
  std::map<std::string, std::string> labels;
  bool pinned = false;
  int64_t create_time_ms = 0;
  int64_t update_time_ms = 0;
  std::string error;               // FAILED: why
  int64_t stored_bytes = 0;        // sum of blob payloads
  std::vector<BlobEntry> manifest;  // READY: every blob's checksum
  bool operator==(const ContextRecord&) const = default;
};

class ContextStore {
 public:
  // The on-disk format this build reads and writes.
  static constexpr int32_t kFormatVersion = 1;

  // Opens (creating when missing) the database at options.path. FAILED_PRECONDITION when the
  // database was written by a newer format version; UNAVAILABLE when RocksDB cannot open it (e.g.
  // another process holds its lock).
  static StatusOr<std::unique_ptr<ContextStore>> Open(const StoreOptions& options);
  ~ContextStore();
  ContextStore(const ContextStore&) = delete;
  ContextStore& operator=(const ContextStore&) = delete;

  // ALREADY_EXISTS when a record with this id exists.
  Status CreateRecord(const ContextRecord& record, std::span<const int32_t> tokens);
  StatusOr<ContextRecord> GetRecord(const std::string& id) const;  // NOT_FOUND
  // Overwrites the record (state, progress, error...). sync=false for frequent progress updates.
  Status UpdateRecord(const ContextRecord& record, bool sync);
  StatusOr<std::vector<int32_t>> LoadTokens(const std::string& id) const;

  // Writes the snapshot's blobs and fills record->manifest and record->stored_bytes.
  Status PutSnapshot(const ContextSnapshot& snapshot, ContextRecord* record);
  // Syncs the blobs, then marks the record READY (with its manifest) in one synced write.
  Status CommitReady(ContextRecord record);
  // Reads and verifies the blobs of a READY record. DATA_LOSS on any checksum or size mismatch.
  StatusOr<ContextSnapshot> LoadSnapshot(const ContextRecord& record) const;

  // Removes everything stored for the context. NOT_FOUND when there is no record.
  Status Delete(const std::string& id);

  struct Page {
    std::vector<ContextRecord> records;
    std::string next_page_token;  // "" on the last page
  };
  // Records in id order after page_token; filters by state and owner when given. DELETING records
  // are never listed.
  StatusOr<Page> List(int64_t page_size, const std::string& page_token,
                      std::optional<ContextState> state, std::optional<std::string> owner) const;

  struct Recovery {
    std::vector<std::string> finished_deletes;  // deletions a crash had interrupted, now complete
    std::vector<std::string> unfinished;        // QUEUED..PERSISTING: to re-ingest from tokens
  };
  StatusOr<Recovery> Recover();

  // Bytes of the database files on disk (SST + blob files), for metrics.
  int64_t DiskBytes() const;
  const std::string& path() const { return options_.path; }

 private:
  ContextStore() = default;
  Status RangeDelete(const std::string& id, rocksdb::WriteBatch* batch);

  StoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // owned by db_ until ~ContextStore
  rocksdb::ColumnFamilyHandle* records_ = nullptr;
  rocksdb::ColumnFamilyHandle* tokens_ = nullptr;
  rocksdb::ColumnFamilyHandle* kv_ = nullptr;
  rocksdb::ColumnFamilyHandle* index_ = nullptr;
};

// Hex XXH3-64 of the token ids (content digest for idempotency).
std::string TokenDigest(std::span<const int32_t> tokens);

}  // namespace sqz
