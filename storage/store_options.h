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
};

}  // namespace sqz
