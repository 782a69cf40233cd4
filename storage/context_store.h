// ContextStore: the RocksDB store of registered contexts (DESIGN.md, "Storage").
//
// Column families:
//   default  "__format_version__" -> the on-disk format version (decimal); newer ones are refused
//   records  id -> ContextRecord (JSON object with a "format_version" field; see EncodeRecord)
//   tokens   id -> the registration's token ids (little-endian int32)
//   kv       id \0 layer head kind -> K/V blob of one (layer, kv head)          (BlobDB)
//   index    id \0 layer head kind -> index blob of one (layer, kv head) and the
//            context's meta blob                                             (BlobDB)
// layer and head are big-endian u32 and kind one byte, so a context's blobs sort in (layer, head)
// order and all of them lie in [id \0, id \1): deletion is one DeleteRange per family. Ids never
// contain NUL bytes (ValidateContextId), so no id's range holds another id's blobs.
// Every blob value is sealed (storage/blob_codec.h: magic, format version, kind, length, XXH3-64
// of the payload); the record's manifest lists each blob's checksum and length.
//
// Durability protocol:
//   * CreateRecord writes the record (QUEUED) and the tokens in one synced batch: once it returns,
//     the registration survives a crash.
//   * PutSnapshot writes the blobs (not synced; by default not in the WAL either); CommitReady
//     makes them durable (flushes the kv/index memtables into synced blob files, or syncs the WAL
//     when StoreOptions::blobs_bypass_wal is off) and then flips the record to READY with the blob
//     manifest in one synced write. A context is READY only after that write.
//   * Delete writes DELETING (synced), range-deletes blobs and tokens (synced), then removes the
//     record (synced). Recover() finishes deletions a crash interrupted, so a deleted context never
//     comes back, and lists contexts caught mid-ingestion so the caller can re-ingest them from
//     their tokens. No method ever writes a record that is absent or DELETING (no resurrection).
//   * LoadSnapshot verifies every blob against its header and the manifest: a mismatch is DATA_LOSS
//     naming the context, layer, head and blob kind; corrupt data is never returned.
//
// Thread safety: all methods may be called concurrently. Read-modify-writes of one record are
// serialised by a lock striped over ids; a long PutSnapshot does not hold it (a Delete that races
// with it wins, and PutSnapshot then removes what it wrote and returns NOT_FOUND).
// Threads: RocksDB's background flush/compaction threads, and LoadSnapshot's up to
// StoreOptions::load_threads - 1 short-lived readers (joined before it returns).
#pragma once

#include <rocksdb/db.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/squeeze/snapshot.h"
#include "storage/blob_codec.h"
#include "storage/context_record.h"
#include "storage/fingerprint.h"
#include "storage/store_options.h"

namespace sqz {

// Points in the write paths where a test may simulate a crash (SetCrashHookForTesting).
enum class CrashPoint {
  kBlobsWritten,      // PutSnapshot: all blobs put, nothing synced
  kBlobsSynced,       // CommitReady: blobs durable, record not yet READY
  kDeleteMarked,      // Delete: DELETING written (synced)
  kDeleteRangesDone,  // Delete: blobs and tokens range-deleted (synced), record still there
};

class ContextStore {
 public:
  // The on-disk format this build reads and writes.
  static constexpr int32_t kFormatVersion = 1;
  using BlobKind = blob::Kind;

  // Opens (creating when missing) the database at options.path. INVALID_ARGUMENT for bad options;
  // FAILED_PRECONDITION when the database was written by a newer format version; UNAVAILABLE when
  // RocksDB cannot open it (e.g. another process holds its lock).
  static StatusOr<std::unique_ptr<ContextStore>> Open(const StoreOptions& options);
  ~ContextStore();
  ContextStore(const ContextStore&) = delete;
  ContextStore& operator=(const ContextStore&) = delete;

  // ---- Records and tokens -----------------------------------------------------------------------
  // Writes the record (its state forced to QUEUED, manifest cleared, content_digest set to
  // TokenDigest(tokens)) and the tokens in one synced batch. ALREADY_EXISTS when a record with this
  // id exists; INVALID_ARGUMENT for a bad id, a token_count different from tokens.size(), or a
  // content_digest given that is not the tokens' digest.
  Status CreateRecord(const ContextRecord& record, std::span<const int32_t> tokens);
  StatusOr<ContextRecord> GetRecord(const std::string& id) const;  // NOT_FOUND
  // Overwrites the stored record's mutable fields (progress, labels, pinned, error, options,
  // model...) keeping its state machine honest: NOT_FOUND when absent; FAILED_PRECONDITION when it
  // is DELETING, when record.state is READY but the stored one is not (only CommitReady makes a
  // context READY), or when record.state is DELETING (only Delete); INVALID_ARGUMENT for a progress
  // outside [0, 1]. sync=false is fine for frequent progress updates.
  Status UpdateRecord(const ContextRecord& record, bool sync);
  // Sets state, progress and error of the stored record (same rules as UpdateRecord).
  Status UpdateState(const std::string& id, ContextState state, double progress,
                     const std::string& error, bool sync);
  // The registered token ids, checked against the record's token_count and content_digest:
  // NOT_FOUND, or DATA_LOSS when they do not match.
  StatusOr<std::vector<int32_t>> LoadTokens(const std::string& id) const;

  // ---- Blobs ------------------------------------------------------------------------------------
  // Seals and writes one blob and returns its manifest entry. Not durable until CommitReady (by
  // default not even in the WAL). kMeta blobs take layer = head = 0. NOT_FOUND when the context
  // has no record; FAILED_PRECONDITION when it is DELETING.
  StatusOr<BlobEntry> PutBlob(const std::string& id, int32_t layer, int32_t head, BlobKind kind,
                              std::string payload);
  // Reads one blob and verifies its header and checksum: DATA_LOSS naming the context, layer, head
  // and kind on any mismatch (or when it is missing), never corrupt bytes. Returns the payload.
  StatusOr<std::string> GetBlob(const std::string& id, int32_t layer, int32_t head,
                                BlobKind kind) const;

  // ---- Snapshots --------------------------------------------------------------------------------
  // Removes the context's previous blobs, writes the snapshot as one meta blob plus a kv and an
  // index blob per (layer, kv head), and fills record->manifest, stored_bytes and thresholds.
  // NOT_FOUND when the record is gone (also when a Delete raced with the writes: then the blobs
  // are removed again); FAILED_PRECONDITION when it is DELETING or READY.
  // K/V elements are written in StoreOptions::kv_dtype.
  Status PutSnapshot(const ContextSnapshot& snapshot, ContextRecord* record);
  // Rounds the snapshot's K/V as PutSnapshot will store them (bf16: in place; fp32: nothing), so
  // that the caller may keep serving exactly what a later LoadSnapshot returns.
  void RoundForStorage(ContextSnapshot* snapshot) const;
  // Makes the blobs durable, then marks the record READY (with record's manifest, sizes and
  // thresholds) in one synced write. NOT_FOUND / FAILED_PRECONDITION (DELETING) as UpdateRecord;
  // INVALID_ARGUMENT when the manifest is empty.
  Status CommitReady(ContextRecord record);
  // Reads and verifies the blobs of a READY record: FAILED_PRECONDITION when not READY; DATA_LOSS
  // on any checksum, size or manifest mismatch or an invalid snapshot.
  StatusOr<ContextSnapshot> LoadSnapshot(const ContextRecord& record) const;
  StatusOr<ContextSnapshot> LoadSnapshot(const std::string& id) const;

  // Removes everything stored for the context (the protocol above), then compacts its key ranges
  // so that its blob files are freed on disk. NOT_FOUND when there is no record.
  Status Delete(const std::string& id);

  // The context's KV was built with another model: in one synced write, its blobs are removed and
  // its record goes back to QUEUED (progress 0, no manifest) with the current model and an error
  // saying what changed, so that it is re-ingested from its tokens. Stale means
  // model_fingerprint != current fingerprint (current.Hash()). OK and no change when equal;
  // NOT_FOUND; FAILED_PRECONDITION when DELETING.
  Status MarkStale(const std::string& id, const ModelIdentity& current);
  Status MarkStale(const std::string& id, uint64_t current_fingerprint);

  // ---- Listing and recovery ---------------------------------------------------------------------
  struct Page {
    std::vector<ContextRecord> records;
    std::string next_page_token;  // "" on the last page
  };
  // Up to page_size records in id order after page_token (the last id of the previous page, so
  // paging is stable under concurrent inserts and deletes), filtered by state and owner when
  // given. DELETING records are never listed. INVALID_ARGUMENT when page_size < 1 or the token is
  // not a valid id.
  StatusOr<Page> List(int64_t page_size, const std::string& page_token,
                      std::optional<ContextState> state = {},
                      std::optional<std::string> owner = {}) const;

  struct Recovery {
    std::vector<std::string> finished_deletes;  // deletions a crash had interrupted, now complete
    std::vector<std::string> unfinished;        // QUEUED..PERSISTING: to re-ingest from tokens
    std::vector<std::string> stale;  // READY with another model: marked stale, also in unfinished
  };
  // Call once after Open, before serving. With `current_fingerprint`, READY contexts built with
  // another model are marked stale (MarkStale) and reported for re-ingestion.
  StatusOr<Recovery> Recover(std::optional<uint64_t> current_fingerprint = {});

  // Bytes of the database files on disk (SST + blob files), for metrics.
  int64_t DiskBytes() const;
  const std::string& path() const { return options_.path; }

  // Fault injection for tests: the hook is called at each CrashPoint; when it returns true the
  // operation stops there and returns ABORTED, leaving on disk what a crash at that point would.
  // Not thread-safe against concurrent operations; set it before use.
  void SetCrashHookForTesting(std::function<bool(CrashPoint, const std::string& id)> hook) {
    crash_hook_ = std::move(hook);
  }

 private:
  ContextStore() = default;
  std::mutex& LockFor(const std::string& id) const;
  // Reads the stored record for a read-modify-write: NOT_FOUND / FAILED_PRECONDITION (DELETING).
  StatusOr<ContextRecord> GetWritable(const std::string& id) const;
  Status WriteRecord(ContextRecord record, bool sync);
  void DeleteBlobRanges(const std::string& id, rocksdb::WriteBatch* batch);
  Status DeleteLocked(const std::string& id);
  // Compacts the context's kv/index key ranges so that deleted blobs free their disk space.
  void ReclaimSpace(const std::string& id);
  Status Crash(CrashPoint point, const std::string& id) const;
  Status MarkStaleImpl(const std::string& id, uint64_t fingerprint, const ModelIdentity* current);
  // Writes a sealed blob (header + payload) whose payload checksum is `checksum`.
  StatusOr<BlobEntry> PutSealed(const std::string& id, int32_t layer, int32_t head, BlobKind kind,
                                std::string sealed, uint64_t checksum);
  // Reads one sealed blob into *value and verifies its header and checksum; returns the payload
  // (a view into *value) and sets *checksum (and *encoding when given).
  StatusOr<std::string_view> ReadSealed(const std::string& id, int32_t layer, int32_t head,
                                        BlobKind kind, rocksdb::PinnableSlice* value,
                                        uint64_t* checksum, uint32_t* encoding = nullptr) const;

  StoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // owned here, destroyed before db_ closes
  rocksdb::ColumnFamilyHandle* records_ = nullptr;
  rocksdb::ColumnFamilyHandle* tokens_ = nullptr;
  rocksdb::ColumnFamilyHandle* kv_ = nullptr;
  rocksdb::ColumnFamilyHandle* index_ = nullptr;
  mutable std::array<std::mutex, 64> locks_;  // guard read-modify-writes of records, by id hash
  std::function<bool(CrashPoint, const std::string&)> crash_hook_;
};

// Hex XXH3-128 of the token ids (content digest for idempotency).
std::string TokenDigest(std::span<const int32_t> tokens);

}  // namespace sqz
