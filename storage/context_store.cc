#include "storage/context_store.h"

#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/options_util.h>
#include <xxhash.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "storage/blob_codec.h"

namespace sqz {
namespace {

using nlohmann::json;

constexpr char kFormatKey[] = "__format_version__";
constexpr uint32_t kMetaLayer = 0xffffffffu;

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

std::string BlobName(const std::string& id, uint32_t layer, uint32_t head, blob::Kind kind) {
  const char* k = kind == blob::Kind::kKv ? "kv" : kind == blob::Kind::kIndex ? "index" : "meta";
  if (layer == kMetaLayer) return "context " + id + " meta blob";
  return "context " + id + " layer " + std::to_string(layer) + " kv head " + std::to_string(head) +
         " " + k + " blob";
}

std::string ManifestKey(uint32_t layer, uint32_t head, blob::Kind kind) {
  const char* k = kind == blob::Kind::kKv ? "kv" : kind == blob::Kind::kIndex ? "index" : "meta";
  if (layer == kMetaLayer) return "meta";
  return std::to_string(layer) + "/" + std::to_string(head) + "/" + k;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

json OptionsToJson(const SqueezeOptions& o) {
  return json{{"sink_tokens", o.sink_tokens},
              {"observation_window", o.observation_window},
              {"centroid_fraction", o.centroid_fraction},
              {"coarse_fraction", o.coarse_fraction},
              {"kmeans_iterations", o.kmeans_iterations},
              {"kmeans_tolerance", o.kmeans_tolerance},
              {"kmeans_seed", o.kmeans_seed},
              {"prefill_chunk_tokens", o.prefill_chunk_tokens}};
}

SqueezeOptions OptionsFromJson(const json& j) {
  SqueezeOptions o;
  o.sink_tokens = j.at("sink_tokens").get<int64_t>();
  o.observation_window = j.at("observation_window").get<int64_t>();
  o.centroid_fraction = j.at("centroid_fraction").get<double>();
  o.coarse_fraction = j.at("coarse_fraction").get<double>();
  o.kmeans_iterations = j.at("kmeans_iterations").get<int32_t>();
  o.kmeans_tolerance = j.at("kmeans_tolerance").get<double>();
  o.kmeans_seed = j.at("kmeans_seed").get<uint64_t>();
  o.prefill_chunk_tokens = j.at("prefill_chunk_tokens").get<int64_t>();
  return o;
}

std::string EncodeRecord(const ContextRecord& r) {
  json manifest = json::array();
  for (const auto& b : r.manifest) {
    manifest.push_back({{"key", b.key}, {"checksum", b.checksum}, {"bytes", b.bytes}});
  }
  json j = {{"format_version", ContextStore::kFormatVersion},
            {"id", r.id},
            {"state", static_cast<int32_t>(r.state)},
            {"progress", r.progress},
            {"model_fingerprint", r.model_fingerprint},
            {"token_count", r.token_count},
            {"content_digest", r.content_digest},
            {"options", OptionsToJson(r.options)},
            {"owner", r.owner},
            {"labels", r.labels},
            {"pinned", r.pinned},
            {"create_time_ms", r.create_time_ms},
            {"update_time_ms", r.update_time_ms},
            {"error", r.error},
            {"stored_bytes", r.stored_bytes},
            {"manifest", manifest}};
  return j.dump();
}

StatusOr<ContextRecord> DecodeRecord(const std::string& id, const std::string& text) {
  try {
    const json j = json::parse(text);
    if (j.at("format_version").get<int32_t>() > ContextStore::kFormatVersion) {
      return FailedPreconditionError("record of context " + id + " has format version " +
                                     std::to_string(j.at("format_version").get<int32_t>()) +
                                     ", newer than this build's");
    }
    ContextRecord r;
    r.id = j.at("id").get<std::string>();
    r.state = static_cast<ContextState>(j.at("state").get<int32_t>());
    r.progress = j.at("progress").get<double>();
    r.model_fingerprint = j.at("model_fingerprint").get<uint64_t>();
    r.token_count = j.at("token_count").get<int64_t>();
    r.content_digest = j.at("content_digest").get<std::string>();
    r.options = OptionsFromJson(j.at("options"));
    r.owner = j.at("owner").get<std::string>();
    r.labels = j.at("labels").get<std::map<std::string, std::string>>();
    r.pinned = j.at("pinned").get<bool>();
    r.create_time_ms = j.at("create_time_ms").get<int64_t>();
    r.update_time_ms = j.at("update_time_ms").get<int64_t>();
    r.error = j.at("error").get<std::string>();
    r.stored_bytes = j.at("stored_bytes").get<int64_t>();
    for (const auto& b : j.at("manifest")) {
      r.manifest.push_back({b.at("key").get<std::string>(), b.at("checksum").get<uint64_t>(),
                            b.at("bytes").get<uint64_t>()});
    }
    return r;
  } catch (const json::exception& e) {
    return DataLossError("record of context " + id + " is corrupt: " + e.what());
  }
}

}  // namespace

std::string_view ContextStateName(ContextState s) {
  switch (s) {
    case ContextState::kQueued: return "QUEUED";
    case ContextState::kPrefilling: return "PREFILLING";
    case ContextState::kClustering: return "CLUSTERING";
    case ContextState::kCalibrating: return "CALIBRATING";
    case ContextState::kPersisting: return "PERSISTING";
    case ContextState::kReady: return "READY";
    case ContextState::kFailed: return "FAILED";
    case ContextState::kDeleting: return "DELETING";
  }
  return "UNKNOWN";
}

std::string TokenDigest(std::span<const int32_t> tokens) {
  const XXH128_hash_t h = XXH3_128bits(tokens.data(), tokens.size_bytes());
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return buf;
}

StatusOr<std::unique_ptr<ContextStore>> ContextStore::Open(const StoreOptions& options) {
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
  rocksdb::ColumnFamilyOptions small;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(static_cast<size_t>(options.block_cache_mb) << 20);
  small.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  rocksdb::ColumnFamilyOptions large = small;
  large.enable_blob_files = true;
  large.min_blob_size = static_cast<uint64_t>(options.blob_min_bytes);
  large.enable_blob_garbage_collection = true;
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
    rocksdb::WriteOptions w;
    w.sync = true;
    SQZ_RETURN_IF_ERROR(FromRocks(
        db->Put(w, store->handles_[0], kFormatKey, std::to_string(kFormatVersion)),
        "writing the format version"));
  } else if (!vs.ok()) {
    return FromRocks(vs, "reading the format version");
  } else if (std::atoi(version.c_str()) > kFormatVersion) {
    return FailedPreconditionError("the context store at '" + options.path +
                                   "' has format version " + version +
                                   ", newer than this build's " +
                                   std::to_string(kFormatVersion) + "; upgrade squeezed");
  }
  return store;
}

ContextStore::~ContextStore() {
  if (!db_) return;
  for (auto* h : handles_) (void)db_->DestroyColumnFamilyHandle(h);
  (void)db_->Close();
}

Status ContextStore::CreateRecord(const ContextRecord& record, std::span<const int32_t> tokens) {
  std::string existing;
  if (db_->Get(rocksdb::ReadOptions(), records_, record.id, &existing).ok()) {
    return AlreadyExistsError("context " + record.id + " already exists");
  }
  ContextRecord r = record;
  if (r.create_time_ms == 0) r.create_time_ms = NowMs();
  r.update_time_ms = r.create_time_ms;
  rocksdb::WriteBatch batch;
  batch.Put(records_, r.id, EncodeRecord(r));
  batch.Put(tokens_, r.id,
            rocksdb::Slice(reinterpret_cast<const char*>(tokens.data()), tokens.size_bytes()));
  rocksdb::WriteOptions w;
  w.sync = true;
  return FromRocks(db_->Write(w, &batch), "registering context " + r.id);
}

StatusOr<ContextRecord> ContextStore::GetRecord(const std::string& id) const {
  std::string text;
  const auto s = db_->Get(rocksdb::ReadOptions(), records_, id, &text);
  if (s.IsNotFound()) return NotFoundError("context " + id + " not found");
  SQZ_RETURN_IF_ERROR(FromRocks(s, "reading context " + id));
  return DecodeRecord(id, text);
}

Status ContextStore::UpdateRecord(const ContextRecord& record, bool sync) {
  ContextRecord r = record;
  r.update_time_ms = NowMs();
  rocksdb::WriteOptions w;
  w.sync = sync;
  return FromRocks(db_->Put(w, records_, r.id, EncodeRecord(r)), "updating context " + r.id);
}

StatusOr<std::vector<int32_t>> ContextStore::LoadTokens(const std::string& id) const {
  std::string bytes;
  const auto s = db_->Get(rocksdb::ReadOptions(), tokens_, id, &bytes);
  if (s.IsNotFound()) return NotFoundError("tokens of context " + id + " not found");
  SQZ_RETURN_IF_ERROR(FromRocks(s, "reading the tokens of context " + id));
  if (bytes.size() % sizeof(int32_t) != 0) {
    return DataLossError("tokens of context " + id + " are truncated");
  }
  std::vector<int32_t> tokens(bytes.size() / sizeof(int32_t));
  std::memcpy(tokens.data(), bytes.data(), bytes.size());
  return tokens;
}

Status ContextStore::PutSnapshot(const ContextSnapshot& snapshot, ContextRecord* record) {
  record->manifest.clear();
  record->stored_bytes = 0;
  const std::string& id = record->id;
  auto put = [&](rocksdb::ColumnFamilyHandle* cf, uint32_t layer, uint32_t head, blob::Kind kind,
                 std::string payload) -> Status {
    BlobEntry e;
    e.key = ManifestKey(layer, head, kind);
    e.checksum = blob::Checksum(payload);
    e.bytes = payload.size();
    record->manifest.push_back(e);
    record->stored_bytes += static_cast<int64_t>(e.bytes);
    return FromRocks(db_->Put(rocksdb::WriteOptions(), cf, BlobKey(id, layer, head, kind),
                              blob::Seal(kind, std::move(payload))),
                     "writing " + BlobName(id, layer, head, kind));
  };
  SQZ_RETURN_IF_ERROR(put(index_, kMetaLayer, 0, blob::Kind::kMeta, blob::EncodeMeta(snapshot)));
  for (int l = 0; l < snapshot.dims.layers; ++l) {
    for (int h = 0; h < snapshot.dims.kv_heads; ++h) {
      const HeadIndex& head = snapshot.head(l, h);
      SQZ_RETURN_IF_ERROR(put(kv_, l, h, blob::Kind::kKv, blob::EncodeKv(head)));
      SQZ_RETURN_IF_ERROR(put(index_, l, h, blob::Kind::kIndex, blob::EncodeIndex(head)));
    }
  }
  return OkStatus();
}

Status ContextStore::CommitReady(ContextRecord record) {
  // Blobs first: flush them into blob files (durable, and out of the WAL and memtables), so that
  // the READY record never points at lost blobs.
  rocksdb::FlushOptions flush;
  flush.wait = true;
  SQZ_RETURN_IF_ERROR(FromRocks(db_->Flush(flush, {kv_, index_}), "flushing blobs of " + record.id));
  SQZ_RETURN_IF_ERROR(FromRocks(db_->FlushWAL(/*sync=*/true), "syncing blobs of " + record.id));
  record.state = ContextState::kReady;
  record.progress = 1.0;
  record.error.clear();
  return UpdateRecord(record, /*sync=*/true);
}

StatusOr<ContextSnapshot> ContextStore::LoadSnapshot(const ContextRecord& record) const {
  if (record.state != ContextState::kReady) {
    return FailedPreconditionError("context " + record.id + " is " +
                                   std::string(ContextStateName(record.state)) + ", not READY");
  }
  std::map<std::string, const BlobEntry*> manifest;
  for (const auto& e : record.manifest) manifest[e.key] = &e;
  const std::string& id = record.id;
  std::string value;
  auto read = [&](rocksdb::ColumnFamilyHandle* cf, uint32_t layer, uint32_t head,
                  blob::Kind kind) -> StatusOr<std::string_view> {
    const std::string what = BlobName(id, layer, head, kind);
    const auto s = db_->Get(rocksdb::ReadOptions(), cf, BlobKey(id, layer, head, kind), &value);
    if (s.IsNotFound()) return DataLossError(what + " is missing");
    SQZ_RETURN_IF_ERROR(FromRocks(s, "reading " + what));
    uint64_t sum = 0;
    SQZ_ASSIGN_OR_RETURN(std::string_view payload, blob::Open(value, kind, what, &sum));
    const auto it = manifest.find(ManifestKey(layer, head, kind));
    if (it == manifest.end() || it->second->checksum != sum ||
        it->second->bytes != payload.size()) {
      return DataLossError(what + " does not match the context's manifest");
    }
    return payload;
  };
  ContextSnapshot snap;
  {
    SQZ_ASSIGN_OR_RETURN(std::string_view meta, read(index_, kMetaLayer, 0, blob::Kind::kMeta));
    SQZ_RETURN_IF_ERROR(blob::DecodeMeta(meta, &snap).WithContext("context " + id));
  }
  const auto& d = snap.dims;
  if (record.manifest.size() != 1 + 2 * static_cast<size_t>(d.layers) * d.kv_heads) {
    return DataLossError("context " + id + ": manifest lists " +
                         std::to_string(record.manifest.size()) + " blobs, the snapshot needs " +
                         std::to_string(1 + 2 * d.layers * d.kv_heads));
  }
  snap.heads.resize(static_cast<size_t>(d.layers) * d.kv_heads);
  for (int l = 0; l < d.layers; ++l) {
    for (int h = 0; h < d.kv_heads; ++h) {
      HeadIndex& head = snap.heads[static_cast<size_t>(l) * d.kv_heads + h];
      {
        SQZ_ASSIGN_OR_RETURN(std::string_view kv, read(kv_, l, h, blob::Kind::kKv));
        SQZ_RETURN_IF_ERROR(blob::DecodeKv(kv, &head).WithContext(BlobName(id, l, h, blob::Kind::kKv)));
      }
      SQZ_ASSIGN_OR_RETURN(std::string_view ix, read(index_, l, h, blob::Kind::kIndex));
      SQZ_RETURN_IF_ERROR(
          blob::DecodeIndex(ix, &head).WithContext(BlobName(id, l, h, blob::Kind::kIndex)));
    }
  }
  const Status valid = ValidateSnapshot(snap);
  if (!valid.ok()) return DataLossError("context " + id + ": " + valid.message());
  return snap;
}

Status ContextStore::RangeDelete(const std::string& id, rocksdb::WriteBatch* batch) {
  const std::string begin = id + std::string(1, '\0');
  const std::string end = id + std::string(1, '\1');
  batch->DeleteRange(kv_, begin, end);
  batch->DeleteRange(index_, begin, end);
  batch->Delete(tokens_, id);
  return OkStatus();
}

Status ContextStore::Delete(const std::string& id) {
  SQZ_ASSIGN_OR_RETURN(ContextRecord r, GetRecord(id));
  rocksdb::WriteOptions sync;
  sync.sync = true;
  // 1. Mark: from here on a crash finishes the deletion in Recover().
  r.state = ContextState::kDeleting;
  SQZ_RETURN_IF_ERROR(UpdateRecord(r, /*sync=*/true));
  // 2. Range-delete the data, 3. remove the record.
  rocksdb::WriteBatch data;
  SQZ_RETURN_IF_ERROR(RangeDelete(id, &data));
  SQZ_RETURN_IF_ERROR(FromRocks(db_->Write(sync, &data), "deleting the data of context " + id));
  return FromRocks(db_->Delete(sync, records_, id), "deleting the record of context " + id);
}

StatusOr<ContextStore::Page> ContextStore::List(int64_t page_size, const std::string& page_token,
                                                std::optional<ContextState> state,
                                                std::optional<std::string> owner) const {
  Page page;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), records_));
  if (page_token.empty()) {
    it->SeekToFirst();
  } else {
    it->Seek(page_token);
    if (it->Valid() && it->key().ToString() == page_token) it->Next();  // token = last id seen
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

StatusOr<ContextStore::Recovery> ContextStore::Recover() {
  Recovery out;
  std::vector<std::string> deleting;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), records_));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const std::string id = it->key().ToString();
      SQZ_ASSIGN_OR_RETURN(ContextRecord r, DecodeRecord(id, it->value().ToString()));
      if (r.state == ContextState::kDeleting) {
        deleting.push_back(id);
      } else if (r.state != ContextState::kReady && r.state != ContextState::kFailed) {
        out.unfinished.push_back(id);
      }
    }
    SQZ_RETURN_IF_ERROR(FromRocks(it->status(), "scanning contexts"));
  }
  for (const auto& id : deleting) {
    SQZ_RETURN_IF_ERROR(Delete(id));
    out.finished_deletes.push_back(id);
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
