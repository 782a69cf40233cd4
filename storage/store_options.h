// Options of the RocksDB context store. Plain data filled by config/ (storage.* in the YAML).
#pragma once

#include <cstdint>
#include <string>

namespace sqz {

struct StoreOptions {
  // Directory of the RocksDB database; created when missing.
  std::string path = "./squeeze-data";
  // Values at least this large go to BlobDB blob files (KV and index blobs). Bytes.
  int64_t blob_min_bytes = 4096;
  // RocksDB block cache for records and tokens, MiB.
  int64_t block_cache_mb = 64;
  // How CommitReady makes a snapshot's blobs durable. true (default): blobs bypass the write-ahead
  // log and CommitReady flushes the kv/index memtables into blob files (bytes written once, nothing
  // to replay at the next start). false: blobs go through the WAL and CommitReady syncs it (bytes
  // written twice; the unflushed tail is replayed when the store is next opened).
  bool blobs_bypass_wal = true;
  // Also check RocksDB's own CRC-32C of each blob record on read. Off by default: every blob
  // carries our XXH3-64 of its payload, checked on every read against the blob's header and the
  // context's manifest, so altered values are DATA_LOSS either way; RocksDB's CRC additionally
  // covers the record's copy of the key and costs ~1 s per GB here (software CRC).
  bool verify_blob_crc = false;
  // Threads that read and decode one snapshot's blobs in parallel (LoadSnapshot), >= 1.
  int32_t load_threads = 4;
  // Element type of the K/V that PutSnapshot writes: "fp32" (the snapshot's own values) or "bf16"
  // (half the bytes and the load time; values rounded to nearest even, which is what the GPU
  // backend keeps anyway). Snapshots are read in whatever type they were written, so a store may
  // hold both. With "bf16" the server rounds a snapshot before persisting it (RoundForStorage), so
  // what it serves before and after a restart is the same.
  std::string kv_dtype = "fp32";
};

}  // namespace sqz
