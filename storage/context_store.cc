#include "storage/context_store.h"

#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>

#include "storage/context_record.h"

namespace sqz {
namespace {

constexpr char kFormatKey[] = "__format_version__";

Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return OkStatus();
  if (s.IsNotFound()) return NotFoundError(what + ": not found");
  if (s.IsCorruption()) return DataLossError(what + ": " + s.ToString());
  if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
    return UnavailableError(what + ": " + s.ToString());
  }
  return InternalError(what + ": " + s.ToString());
}

void PutBigEndian32(std::string* out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// id \0 layer head kind: one context's blobs sort together; the range [id\0, id\1) holds them all.
std::string BlobKey(const std::string& id, uint32_t layer, uint32_t head, blob::Kind kind) {
  std::string k = id;
  k.push_back('\0');
  PutBigEndian32(&k, layer);
  PutBigEndian32(&k, head);
  k.push_back(static_cast<char>(kind));
  return k;
}

const char* KindName(blob::Kind kind) {
  switch (kind) {
    case blob::Kind::kKv:
      return "kv";
    case blob::Kind::kIndex:
      return "index";
    case blob::Kind::kMeta:
      return "meta";
  }
  return "unknown";
}

// "context c layer 3 kv head 1 kv blob": what a DATA_LOSS message names.
std::string BlobName(const std::string& id, uint32_t layer, uint32_t head, blob::Kind kind) {
  if (kind == blob::Kind::kMeta) return "context " + id + " meta blob";
  return "context " + id + " layer " + std::to_string(layer) + " kv head " + std::to_string(head) +
         " " + KindName(kind) + " blob";
}

std::string ManifestKey(uint32_t layer, uint32_t head, blob::Kind kind) {
  if (kind == blob::Kind::kMeta) return "meta";
  return std::to_string(layer) + "/" + std::to_string(head) + "/" + KindName(kind);
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

rocksdb::WriteOptions Synced() {
  rocksdb::WriteOptions w;
  w.sync = true;
  return w;
}

}  // namespace

std::string TokenDigest(std::span<const int32_t> tokens) {
  const XXH128_hash_t h = XXH3_128bits(tokens.data(), tokens.size_bytes());
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return buf;
}

StatusOr<std::unique_ptr<ContextStore>> ContextStore::Open(const StoreOptions& options) {
  if (options.path.empty()) return InvalidArgumentError("storage.path is empty");
  if (options.blob_min_bytes < 0) {
    return InvalidArgumentError("storage.blob_min_bytes must be >= 0, got " +
                                std::to_string(options.blob_min_bytes));
  }
  if (options.block_cache_mb < 1) {
    return InvalidArgumentError("storage.block_cache_mb must be >= 1, got " +
                                std::to_string(options.block_cache_mb));
  }
  if (options.kv_dtype != "fp32" && options.kv_dtype != "bf16") {
    return InvalidArgumentError("storage.kv_dtype must be fp32 or bf16, got '" + options.kv_dtype +
                                "'");
  }
  std::unique_ptr<ContextStore> store(new ContextStore());
  store->options_ = options;
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return InvalidArgumentError("storage.path: cannot create '" + options.path +
                                "': " + ec.message());
  }
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 4;
  rocksdb::ColumnFamilyOptions small;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(static_cast<size_t>(options.block_cache_mb) << 20);
  small.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // KV and index values are large float arrays: kept in BlobDB files (uncompressed: floats barely
  // compress), with only small blob references in the LSM tree. Large memtables, so that a context
  // of gigabytes does not stall on flushes.
  rocksdb::ColumnFamilyOptions large = small;
  large.enable_blob_files = true;
  large.min_blob_size = static_cast<uint64_t>(options.blob_min_bytes);
  large.enable_blob_garbage_collection = true;
  large.write_buffer_size = 256 << 20;
  large.max_write_buffer_number = 4;
  large.blob_file_size = 512 << 20;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, small},
      {"records", small},
      {"tokens", small},
      {"kv", large},
      {"index", large}};
  rocksdb::DB* db = nullptr;
  const rocksdb::Status s =
      rocksdb::DB::Open(db_options, options.path, families, &store->handles_, &db);
  if (!s.ok()) {
    return UnavailableError("cannot open the context store at '" + options.path +
                            "': " + s.ToString());
  }
  store->db_.reset(db);
  store->records_ = store->handles_[1];
  store->tokens_ = store->handles_[2];
  store->kv_ = store->handles_[3];
  store->index_ = store->handles_[4];
  // Format version: written on first open; a newer one is refused.
  std::string version;
  const auto vs = db->Get(rocksdb::ReadOptions(), store->handles_[0], kFormatKey, &version);
  if (vs.IsNotFound()) {
    SQZ_RETURN_IF_ERROR(
        FromRocks(db->Put(Synced(), store->handles_[0], kFormatKey, std::to_string(kFormatVersion)),
                  "writing the format version"));
  } else if (!vs.ok()) {
    return FromRocks(vs, "reading the format version");
  } else if (std::atoi(version.c_str()) > kFormatVersion) {
    return FailedPreconditionError(
        "the context store at '" + options.path + "' has format version " + version +
        ", newer than this build's " + std::to_string(kFormatVersion) + "; upgrade squeezed");
  } else if (std::atoi(version.c_str()) < 1) {
    return DataLossError("the context store at '" + options.path +
                         "' has an unreadable format version '" + version + "'");
  }
  return store;
}

ContextStore::~ContextStore() {
  if (!db_) return;
  for (auto* h : handles_) (void)db_->DestroyColumnFamilyHandle(h);
  (void)db_->Close();
}

std::mutex& ContextStore::LockFor(const std::string& id) const {
  return locks_[std::hash<std::string>()(id) % locks_.size()];
}

Status ContextStore::Crash(CrashPoint point, const std::string& id) const {
  if (crash_hook_ && crash_hook_(point, id)) {
    return Status(StatusCode::kAborted, "injected crash at point " +
                                            std::to_string(static_cast<int>(point)) +
                                            " for context " + id);
  }
  return OkStatus();
}

// ---- Records and tokens -------------------------------------------------------------------------

Status ContextStore::CreateRecord(const ContextRecord& record, std::span<const int32_t> tokens) {
  SQZ_RETURN_IF_ERROR(ValidateContextId(record.id));
  if (record.token_count != static_cast<int64_t>(tokens.size())) {
    return InvalidArgumentError("context " + record.id + ": token_count " +
                                std::to_string(record.token_count) + " differs from the " +
                                std::to_string(tokens.size()) + " tokens given");
  }
  SQZ_RETURN_IF_ERROR(ValidateModel(record));
  const std::string digest = TokenDigest(tokens);
  if (!record.content_digest.empty() && record.content_digest != digest) {
    return InvalidArgumentError("context " + record.id + ": content_digest " +
                                record.content_digest + " is not the digest of the tokens given (" +
                                digest + ")");
  }
  std::lock_guard<std::mutex> lock(LockFor(record.id));
  std::string existing;
  const auto got = db_->Get(rocksdb::ReadOptions(), records_, record.id, &existing);
  if (got.ok()) return AlreadyExistsError("context " + record.id + " already exists");
  if (!got.IsNotFound()) return FromRocks(got, "registering context " + record.id);
  ContextRecord r = record;
  r.content_digest = digest;
  r.state = ContextState::kQueued;
  r.manifest.clear();
  r.stored_bytes = 0;
  r.resident_bytes = 0;
  if (r.create_time_ms == 0) r.create_time_ms = NowMs();
  r.update_time_ms = r.create_time_ms;
  rocksdb::WriteBatch batch;
  batch.Put(records_, r.id, EncodeRecord(r));
  batch.Put(tokens_, r.id,
            rocksdb::Slice(reinterpret_cast<const char*>(tokens.data()), tokens.size_bytes()));
  return FromRocks(db_->Write(Synced(), &batch), "registering context " + r.id);
}

StatusOr<ContextRecord> ContextStore::GetRecord(const std::string& id) const {
  SQZ_RETURN_IF_ERROR(ValidateContextId(id));
  std::string text;
  const auto s = db_->Get(rocksdb::ReadOptions(), records_, id, &text);
  if (s.IsNotFound()) return NotFoundError("context " + id + " not found");
  SQZ_RETURN_IF_ERROR(FromRocks(s, "reading context " + id));
  return DecodeRecord(id, text);
}

StatusOr<ContextRecord> ContextStore::GetWritable(const std::string& id) const {
  SQZ_ASSIGN_OR_RETURN(ContextRecord stored, GetRecord(id));
  if (stored.state == ContextState::kDeleting) {
    return FailedPreconditionError("context " + id + " is being deleted");
  }
  return stored;
}

namespace {

// READY only through CommitReady, DELETING only through Delete.
Status CheckTransition(const ContextRecord& stored, ContextState next, double progress) {
  if (next == ContextState::kDeleting) {
    return FailedPreconditionError("context " + stored.id + ": use Delete to delete a context");
  }
  if (next == ContextState::kReady && stored.state != ContextState::kReady) {
    return FailedPreconditionError("context " + stored.id + " is " +
                                   std::string(ContextStateName(stored.state)) +
                                   "; only CommitReady makes a context READY");
  }
  if (!std::isfinite(progress) || progress < 0.0 || progress > 1.0) {
    return InvalidArgumentError("context " + stored.id + ": progress must be in [0, 1], got " +
                                std::to_string(progress));
  }
  if (static_cast<int32_t>(next) < 1 || static_cast<int32_t>(next) > 8) {
    return InvalidArgumentError("context " + stored.id + ": unknown state " +
                                std::to_string(static_cast<int32_t>(next)));
  }
  return OkStatus();
}

}  // namespace

Status ContextStore::WriteRecord(ContextRecord record, bool sync) {
  record.update_time_ms = NowMs();
  rocksdb::WriteOptions w;
  w.sync = sync;
  return FromRocks(db_->Put(w, records_, record.id, EncodeRecord(record)),
                   "updating context " + record.id);
}

Status ContextStore::UpdateRecord(const ContextRecord& record, bool sync) {
  SQZ_RETURN_IF_ERROR(ValidateContextId(record.id));
  SQZ_RETURN_IF_ERROR(ValidateModel(record));
  std::lock_guard<std::mutex> lock(LockFor(record.id));
  SQZ_ASSIGN_OR_RETURN(ContextRecord stored, GetWritable(record.id));
  SQZ_RETURN_IF_ERROR(CheckTransition(stored, record.state, record.progress));
  ContextRecord r = record;
  r.create_time_ms = stored.create_time_ms;
  return WriteRecord(std::move(r), sync);
}

Status ContextStore::UpdateState(const std::string& id, ContextState state, double progress,
                                 const std::string& error, bool sync) {
  SQZ_RETURN_IF_ERROR(ValidateContextId(id));
  std::lock_guard<std::mutex> lock(LockFor(id));
  SQZ_ASSIGN_OR_RETURN(ContextRecord r, GetWritable(id));
  SQZ_RETURN_IF_ERROR(CheckTransition(r, state, progress));
  r.state = state;
  r.progress = progress;
  r.error = error;
  return WriteRecord(std::move(r), sync);
}

StatusOr<std::vector<int32_t>> ContextStore::LoadTokens(const std::string& id) const {
  SQZ_RETURN_IF_ERROR(ValidateContextId(id));
  std::string bytes;
  const auto s = db_->Get(rocksdb::ReadOptions(), tokens_, id, &bytes);
  if (s.IsNotFound()) return NotFoundError("tokens of context " + id + " not found");
  SQZ_RETURN_IF_ERROR(FromRocks(s, "reading the tokens of context " + id));
  if (bytes.size() % sizeof(int32_t) != 0) {
    return DataLossError("tokens of context " + id + " are truncated (" +
                         std::to_string(bytes.size()) + " bytes)");
  }
  std::vector<int32_t> tokens(bytes.size() / sizeof(int32_t));
  std::memcpy(tokens.data(), bytes.data(), bytes.size());
  // Re-ingestion must not build a context from other tokens than were registered.
  SQZ_ASSIGN_OR_RETURN(ContextRecord r, GetRecord(id));
  if (r.token_count != static_cast<int64_t>(tokens.size()) ||
      r.content_digest != TokenDigest(tokens)) {
    return DataLossError("tokens of context " + id + " do not match its record (" +
                         std::to_string(tokens.size()) + " tokens stored, " +
                         std::to_string(r.token_count) + " registered, or another digest)");
  }
  return tokens;
}

// ---- Blobs --------------------------------------------------------------------------------------

StatusOr<BlobEntry> ContextStore::PutBlob(const std::string& id, int32_t layer, int32_t head,
                                          BlobKind kind, std::string payload) {
  std::string sealed(blob::kHeaderBytes, '\0');
  sealed += payload;
  const uint64_t sum = blob::SealReserved(kind, &sealed);
  return PutSealed(id, layer, head, kind, std::move(sealed), sum);
}

StatusOr<BlobEntry> ContextStore::PutSealed(const std::string& id, int32_t layer, int32_t head,
                                            BlobKind kind, std::string sealed, uint64_t checksum) {
  SQZ_RETURN_IF_ERROR(ValidateContextId(id));
  if (layer < 0 || head < 0 || (kind == BlobKind::kMeta && (layer != 0 || head != 0))) {
    return InvalidArgumentError("context " + id + ": bad blob address layer " +
                                std::to_string(layer) + " head " + std::to_string(head) + " " +
                                KindName(kind));
  }
  SQZ_RETURN_IF_ERROR(GetWritable(id).status());
  BlobEntry e;
  e.key = ManifestKey(layer, head, kind);
  e.checksum = checksum;
  e.bytes = sealed.size() - blob::kHeaderBytes;
  rocksdb::WriteOptions w;
  w.disableWAL = options_.blobs_bypass_wal;  // CommitReady flushes the memtables instead
  SQZ_RETURN_IF_ERROR(FromRocks(
      db_->Put(w, kind == BlobKind::kKv ? kv_ : index_, BlobKey(id, layer, head, kind), sealed),
      "writing " + BlobName(id, layer, head, kind)));
  return e;
}

StatusOr<std::string_view> ContextStore::ReadSealed(const std::string& id, int32_t layer,
                                                    int32_t head, BlobKind kind,
                                                    rocksdb::PinnableSlice* value,
                                                    uint64_t* checksum, uint32_t* encoding) const {
  SQZ_RETURN_IF_ERROR(ValidateContextId(id));
  if (layer < 0 || head < 0) {
    return InvalidArgumentError("context " + id + ": bad blob address layer " +
                                std::to_string(layer) + " head " + std::to_string(head));
  }
  const std::string what = BlobName(id, layer, head, kind);
  value->Reset();
  rocksdb::ReadOptions ro;
  ro.verify_checksums = options_.verify_blob_crc;
  const auto s =
      db_->Get(ro, kind == BlobKind::kKv ? kv_ : index_, BlobKey(id, layer, head, kind), value);
  if (s.IsNotFound()) return DataLossError(what + " is missing");
  SQZ_RETURN_IF_ERROR(FromRocks(s, "reading " + what));
  return blob::Open(std::string_view(value->data(), value->size()), kind, what, checksum,
                    encoding);
}

StatusOr<std::string> ContextStore::GetBlob(const std::string& id, int32_t layer, int32_t head,
                                            BlobKind kind) const {
  rocksdb::PinnableSlice value;
  uint64_t sum = 0;
  SQZ_ASSIGN_OR_RETURN(std::string_view payload, ReadSealed(id, layer, head, kind, &value, &sum));
  return std::string(payload);
}

// ---- Snapshots ----------------------------------------------------------------------------------

void ContextStore::DeleteBlobRanges(const std::string& id, rocksdb::WriteBatch* batch) {
  const std::string begin = id + std::string(1, '\0');
  const std::string end = id + std::string(1, '\1');
  batch->DeleteRange(kv_, begin, end);
  batch->DeleteRange(index_, begin, end);
}

Status ContextStore::PutSnapshot(const ContextSnapshot& snapshot, ContextRecord* record) {
  const std::string& id = record->id;
  SQZ_RETURN_IF_ERROR(ValidateContextId(id));
  SQZ_RETURN_IF_ERROR(ValidateSnapshot(snapshot).WithContext("context " + id));
  {
    SQZ_ASSIGN_OR_RETURN(ContextRecord stored, GetWritable(id));
    if (stored.state == ContextState::kReady) {
      return FailedPreconditionError("context " + id + " is READY; its snapshot is immutable");
    }
  }
  {
    // Blobs of an earlier, interrupted attempt (or of another model's shapes) go first.
    rocksdb::WriteBatch clear;
    DeleteBlobRanges(id, &clear);
    SQZ_RETURN_IF_ERROR(FromRocks(db_->Write(rocksdb::WriteOptions(), &clear),
                                  "clearing old blobs of context " + id));
  }
  record->manifest.clear();
  record->stored_bytes = 0;
  record->resident_bytes = SnapshotBytes(snapshot);
  record->thresholds = snapshot.thresholds_global;
  const blob::KvDType kv_dtype =
      options_.kv_dtype == "bf16" ? blob::KvDType::kBf16 : blob::KvDType::kF32;
  auto put = [&](int32_t layer, int32_t head, blob::Kind kind, std::string buffer) -> Status {
    const uint32_t encoding = kind == blob::Kind::kKv ? static_cast<uint32_t>(kv_dtype) : 0;
    const uint64_t sum = blob::SealReserved(kind, &buffer, encoding);
    SQZ_ASSIGN_OR_RETURN(BlobEntry e, PutSealed(id, layer, head, kind, std::move(buffer), sum));
    record->stored_bytes += static_cast<int64_t>(e.bytes);
    record->manifest.push_back(std::move(e));
    return OkStatus();
  };
  Status s = put(0, 0, blob::Kind::kMeta, blob::EncodeMeta(snapshot, true));
  for (int l = 0; s.ok() && l < snapshot.dims.layers; ++l) {
    for (int h = 0; s.ok() && h < snapshot.dims.kv_heads; ++h) {
      const HeadIndex& head = snapshot.head(l, h);
      s = put(l, h, blob::Kind::kKv, blob::EncodeKv(head, true, kv_dtype));
      if (s.ok()) s = put(l, h, blob::Kind::kIndex, blob::EncodeIndex(head, true));
    }
  }
  if (s.ok()) s = Crash(CrashPoint::kBlobsWritten, id);
  if (s.ok()) {
    // A Delete that ran meanwhile removed the record: remove what this call wrote after it.
    std::lock_guard<std::mutex> lock(LockFor(id));
    s = GetWritable(id).status();
  }
  if (!s.ok() && s.code() != StatusCode::kAborted) {
    rocksdb::WriteBatch undo;
    DeleteBlobRanges(id, &undo);
    (void)db_->Write(rocksdb::WriteOptions(), &undo);
  }
  return s;
}

void ContextStore::RoundForStorage(ContextSnapshot* snapshot) const {
  if (options_.kv_dtype == "bf16") blob::RoundKvToBf16(snapshot);
}

Status ContextStore::CommitReady(ContextRecord record) {
  SQZ_RETURN_IF_ERROR(ValidateContextId(record.id));
  SQZ_RETURN_IF_ERROR(ValidateModel(record));
  if (record.manifest.empty()) {
    return InvalidArgumentError("context " + record.id +
                                ": CommitReady without a manifest (call PutSnapshot first)");
  }
  SQZ_RETURN_IF_ERROR(GetWritable(record.id).status());
  // Blobs first, so that the READY record never points at lost blobs: flush the memtables that
  // hold them into (synced) blob files, or sync the WAL that holds them. Outside the record lock:
  // the final flush may take a while.
  if (options_.blobs_bypass_wal) {
    rocksdb::FlushOptions flush;
    flush.wait = true;
    flush.allow_write_stall = true;
    SQZ_RETURN_IF_ERROR(
        FromRocks(db_->Flush(flush, {kv_, index_}), "flushing the blobs of context " + record.id));
  } else {
    SQZ_RETURN_IF_ERROR(
        FromRocks(db_->FlushWAL(/*sync=*/true), "syncing the blobs of context " + record.id));
  }
  SQZ_RETURN_IF_ERROR(Crash(CrashPoint::kBlobsSynced, record.id));
  std::lock_guard<std::mutex> lock(LockFor(record.id));
  SQZ_ASSIGN_OR_RETURN(ContextRecord stored, GetWritable(record.id));  // a Delete may have won
  record.state = ContextState::kReady;
  record.progress = 1.0;
  record.error.clear();
  record.create_time_ms = stored.create_time_ms;
  return WriteRecord(std::move(record), /*sync=*/true);
}

StatusOr<ContextSnapshot> ContextStore::LoadSnapshot(const std::string& id) const {
  SQZ_ASSIGN_OR_RETURN(ContextRecord r, GetRecord(id));
  return LoadSnapshot(r);
}

StatusOr<ContextSnapshot> ContextStore::LoadSnapshot(const ContextRecord& record) const {
  SQZ_RETURN_IF_ERROR(ValidateContextId(record.id));
  if (record.state != ContextState::kReady) {
    return FailedPreconditionError("context " + record.id + " is " +
                                   std::string(ContextStateName(record.state)) + ", not READY");
  }
  std::map<std::string, const BlobEntry*> manifest;
  for (const auto& e : record.manifest) manifest[e.key] = &e;
  const std::string& id = record.id;
  // Reads one blob into *value, verified against its header and against the manifest.
  auto read = [&](uint32_t layer, uint32_t head, blob::Kind kind, rocksdb::PinnableSlice* value,
                  uint32_t* encoding = nullptr) -> StatusOr<std::string_view> {
    uint64_t sum = 0;
    SQZ_ASSIGN_OR_RETURN(std::string_view payload,
                         ReadSealed(id, layer, head, kind, value, &sum, encoding));
    const auto it = manifest.find(ManifestKey(layer, head, kind));
    if (it == manifest.end()) {
      return DataLossError(BlobName(id, layer, head, kind) + " is not in the context's manifest");
    }
    if (it->second->bytes != payload.size() || it->second->checksum != sum) {
      return DataLossError(BlobName(id, layer, head, kind) +
                           " does not match the context's manifest (checksum or length)");
    }
    return payload;
  };
  ContextSnapshot snap;
  {
    rocksdb::PinnableSlice value;
    SQZ_ASSIGN_OR_RETURN(std::string_view meta, read(0, 0, blob::Kind::kMeta, &value));
    SQZ_RETURN_IF_ERROR(
        blob::DecodeMeta(meta, &snap).WithContext(BlobName(id, 0, 0, blob::Kind::kMeta)));
  }
  const auto& d = snap.dims;
  if (d.layers < 1 || d.kv_heads < 1 || d.layers > (1 << 16) || d.kv_heads > (1 << 16)) {
    return DataLossError("context " + id + ": meta blob has " + std::to_string(d.layers) +
                         " layers and " + std::to_string(d.kv_heads) + " kv heads");
  }
  const size_t n_heads = static_cast<size_t>(d.layers) * d.kv_heads;
  if (record.manifest.size() != 1 + 2 * n_heads) {
    return DataLossError("context " + id + ": manifest lists " +
                         std::to_string(record.manifest.size()) + " blobs, the snapshot needs " +
                         std::to_string(1 + 2 * n_heads));
  }
  snap.heads.resize(n_heads);
  // Heads are read and decoded by up to load_threads workers (reads overlap decoding); each head's
  // status lands in its own slot, and the first failing head in (layer, head) order is reported.
  std::vector<Status> results(n_heads);
  std::atomic<size_t> next{0};
  auto work = [&] {
    rocksdb::PinnableSlice value;
    for (size_t i; (i = next.fetch_add(1)) < n_heads;) {
      const int l = static_cast<int>(i / d.kv_heads);
      const int h = static_cast<int>(i % d.kv_heads);
      HeadIndex& head = snap.heads[i];
      Status& s = results[i];
      uint32_t encoding = 0;
      auto kv = read(l, h, blob::Kind::kKv, &value, &encoding);
      s = kv.ok() ? blob::DecodeKv(*kv, &head, static_cast<blob::KvDType>(encoding))
                        .WithContext(BlobName(id, l, h, blob::Kind::kKv))
                  : kv.status();
      if (s.ok()) {
        auto ix = read(l, h, blob::Kind::kIndex, &value);
        s = ix.ok()
                ? blob::DecodeIndex(*ix, &head).WithContext(BlobName(id, l, h, blob::Kind::kIndex))
                : ix.status();
      }
    }
  };
  const size_t threads =
      std::min<size_t>(n_heads, static_cast<size_t>(std::max<int32_t>(1, options_.load_threads)));
  std::vector<std::thread> workers;
  for (size_t t = 1; t < threads; ++t) workers.emplace_back(work);
  work();
  for (auto& w : workers) w.join();
  for (const Status& s : results) SQZ_RETURN_IF_ERROR(s);
  const Status valid = ValidateSnapshot(snap);
  if (!valid.ok()) return DataLossError("context " + id + ": " + valid.message());
  return snap;
}

// ---- Deletion and staleness ---------------------------------------------------------------------

Status ContextStore::Delete(const std::string& id) {
  SQZ_RETURN_IF_ERROR(ValidateContextId(id));
  {
    std::lock_guard<std::mutex> lock(LockFor(id));
    SQZ_RETURN_IF_ERROR(DeleteLocked(id));
  }
  ReclaimSpace(id);
  return OkStatus();
}

void ContextStore::ReclaimSpace(const std::string& id) {
  // Range tombstones alone free nothing until a compaction happens to cover them, which a store
  // with few writes may never run: compact the context's ranges now, so that the SST entries go
  // and blob files that held only this context's blobs become obsolete and are deleted. Errors
  // are ignored: the data is already deleted logically, and a later compaction frees it.
  const std::string begin = id + std::string(1, '\0');
  const std::string end = id + std::string(1, '\1');
  const rocksdb::Slice b(begin), e(end);
  rocksdb::CompactRangeOptions o;
  o.exclusive_manual_compaction = false;
  o.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForceOptimized;
  for (auto* cf : {kv_, index_}) (void)db_->CompactRange(o, cf, &b, &e);
}

Status ContextStore::DeleteLocked(const std::string& id) {
  SQZ_ASSIGN_OR_RETURN(ContextRecord r, GetRecord(id));
  // 1. Mark: from here on a crash finishes the deletion in Recover().
  if (r.state != ContextState::kDeleting) {
    r.state = ContextState::kDeleting;
    SQZ_RETURN_IF_ERROR(WriteRecord(r, /*sync=*/true));
  }
  SQZ_RETURN_IF_ERROR(Crash(CrashPoint::kDeleteMarked, id));
  // 2. Range-delete the data.
  rocksdb::WriteBatch data;
  DeleteBlobRanges(id, &data);
  data.Delete(tokens_, id);
  SQZ_RETURN_IF_ERROR(FromRocks(db_->Write(Synced(), &data), "deleting the data of context " + id));
  SQZ_RETURN_IF_ERROR(Crash(CrashPoint::kDeleteRangesDone, id));
  // 3. Remove the record.
  return FromRocks(db_->Delete(Synced(), records_, id), "deleting the record of context " + id);
}

Status ContextStore::MarkStale(const std::string& id, const ModelIdentity& current) {
  return MarkStaleImpl(id, current.Hash(), &current);
}

Status ContextStore::MarkStale(const std::string& id, uint64_t current_fingerprint) {
  return MarkStaleImpl(id, current_fingerprint, nullptr);
}

Status ContextStore::MarkStaleImpl(const std::string& id, uint64_t fingerprint,
                                   const ModelIdentity* current) {
  SQZ_RETURN_IF_ERROR(ValidateContextId(id));
  std::unique_lock<std::mutex> lock(LockFor(id));
  SQZ_ASSIGN_OR_RETURN(ContextRecord r, GetWritable(id));
  if (r.model_fingerprint == fingerprint) return OkStatus();
  std::string what;
  if (current != nullptr && !r.model.config_summary.empty()) {
    what = DescribeIdentityChange(r.model, *current);
  }
  if (what.empty()) {
    char buf[80];
    std::snprintf(buf, sizeof(buf), "model fingerprint %016llx differs from the current %016llx",
                  static_cast<unsigned long long>(r.model_fingerprint),
                  static_cast<unsigned long long>(fingerprint));
    what = buf;
  }
  r.error = "built for another model (" + what + "); re-ingesting from the stored tokens";
  r.state = ContextState::kQueued;
  r.progress = 0.0;
  r.manifest.clear();
  r.stored_bytes = 0;
  r.resident_bytes = 0;
  r.thresholds.clear();
  r.model_fingerprint = fingerprint;
  r.model = current != nullptr ? *current : ModelIdentity{};
  r.update_time_ms = NowMs();
  rocksdb::WriteBatch batch;
  DeleteBlobRanges(id, &batch);
  batch.Put(records_, id, EncodeRecord(r));
  SQZ_RETURN_IF_ERROR(FromRocks(db_->Write(Synced(), &batch), "marking context " + id + " stale"));
  lock.unlock();
  ReclaimSpace(id);
  return OkStatus();
}

// ---- Listing and recovery -----------------------------------------------------------------------

StatusOr<ContextStore::Page> ContextStore::List(int64_t page_size, const std::string& page_token,
                                                std::optional<ContextState> state,
                                                std::optional<std::string> owner) const {
  if (page_size < 1) {
    return InvalidArgumentError("page size must be at least 1, got " + std::to_string(page_size));
  }
  if (!page_token.empty()) {
    SQZ_RETURN_IF_ERROR(ValidateContextId(page_token).WithContext("invalid page token"));
  }
  Page page;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), records_));
  if (page_token.empty()) {
    it->SeekToFirst();
  } else {
    it->Seek(page_token);
    if (it->Valid() && it->key() == rocksdb::Slice(page_token)) it->Next();  // the last id seen
  }
  for (; it->Valid(); it->Next()) {
    const std::string id = it->key().ToString();
    SQZ_ASSIGN_OR_RETURN(ContextRecord r, DecodeRecord(id, it->value().ToString()));
    if (r.state == ContextState::kDeleting) continue;
    if (state && r.state != *state) continue;
    if (owner && r.owner != *owner) continue;
    if (static_cast<int64_t>(page.records.size()) == page_size) {
      page.next_page_token = page.records.back().id;
      break;
    }
    page.records.push_back(std::move(r));
  }
  SQZ_RETURN_IF_ERROR(FromRocks(it->status(), "listing contexts"));
  return page;
}

StatusOr<ContextStore::Recovery> ContextStore::Recover(
    std::optional<uint64_t> current_fingerprint) {
  Recovery out;
  std::vector<std::string> deleting, stale;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), records_));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const std::string id = it->key().ToString();
      SQZ_ASSIGN_OR_RETURN(ContextRecord r, DecodeRecord(id, it->value().ToString()));
      if (r.state == ContextState::kDeleting) {
        deleting.push_back(id);
      } else if (IsIngesting(r.state)) {
        out.unfinished.push_back(id);
      } else if (r.state == ContextState::kReady && current_fingerprint &&
                 r.model_fingerprint != *current_fingerprint) {
        stale.push_back(id);
      }
    }
    SQZ_RETURN_IF_ERROR(FromRocks(it->status(), "scanning contexts"));
  }
  for (const auto& id : deleting) {
    SQZ_RETURN_IF_ERROR(Delete(id));
    out.finished_deletes.push_back(id);
  }
  for (const auto& id : stale) {
    SQZ_RETURN_IF_ERROR(MarkStale(id, *current_fingerprint));
    out.stale.push_back(id);
    out.unfinished.push_back(id);
  }
  return out;
}

int64_t ContextStore::DiskBytes() const {
  int64_t total = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(options_.path, ec)) {
    const auto ext = e.path().extension().string();
    if (ext == ".sst" || ext == ".blob") total += static_cast<int64_t>(e.file_size(ec));
  }
  return total;
}

}  // namespace sqz
