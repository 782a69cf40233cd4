// Bytes flipped inside RocksDB's blob files (*.blob, written by BlobDB for the kv and index column
// families) are detected when the snapshot is loaded, every time: the load fails with DATA_LOSS
// and never returns altered data. Three kinds of damage:
//   1. a byte of a stored value flipped: RocksDB's blob record CRC or our XXH3-64 catches it;
//   2. the same, with the blob record's CRC recomputed so that RocksDB cannot see it: only our
//      sealed header's checksum (storage/blob_codec.h) can, and must name the blob;
//   3. a byte anywhere in a blob file (headers, keys, footers included): with verify_blob_crc every
//      flip is DATA_LOSS; with the default options every flip that touches a value is, and no flip
//      ever yields altered data (a flipped copy of a key beside a value is not read back).
#include <catch2/catch.hpp>
#include <fstream>
#include <random>

#include "storage/test_util.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;
using testing::MakeSnapshot;
using testing::OpenOrDie;
using testing::TempDir;

// CRC-32C (Castagnoli) as RocksDB stores it (util/crc32c.h: masked).
uint32_t Crc32c(const char* data, size_t n, uint32_t crc = 0) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= static_cast<unsigned char>(data[i]);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
  }
  return ~crc;
}
uint32_t Mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

std::string ReadFile(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void WriteFile(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// One stored value inside a blob file: where its BlobDB record and our sealed value start.
struct ValueAt {
  fs::path file;
  size_t record = 0;  // start of the 32-byte BlobDB record header
  size_t key_size = 0;
  size_t value = 0;  // start of the sealed value (our 32-byte header, then the payload)
  size_t value_size = 0;
};

uint64_t U64At(const std::string& s, size_t at) {
  uint64_t v;
  std::memcpy(&v, s.data() + at, 8);
  return v;
}

// Finds our sealed values ("SQZB" magic) and checks that each sits in a BlobDB record
// (key_size u64 | value_size u64 | expiration u64 | header crc u32 | blob crc u32 | key | value).
std::vector<ValueAt> FindValues(const fs::path& file) {
  const std::string bytes = ReadFile(file);
  std::vector<ValueAt> out;
  for (size_t pos = bytes.find("SQZB"); pos != std::string::npos;
       pos = bytes.find("SQZB", pos + 1)) {
    for (size_t key_size = 1; key_size < 300 && key_size + 32 <= pos; ++key_size) {
      const size_t rec = pos - key_size - 32;
      if (U64At(bytes, rec) == key_size && U64At(bytes, rec + 8) >= 32 &&
          rec + 32 + key_size + U64At(bytes, rec + 8) <= bytes.size()) {
        out.push_back({file, rec, key_size, pos, U64At(bytes, rec + 8)});
        break;
      }
    }
  }
  return out;
}

// Copies the golden database, applies `damage` to one file's bytes, loads the snapshot.
StatusOr<ContextSnapshot> LoadDamaged(const fs::path& golden, const fs::path& file,
                                      const std::function<void(std::string*)>& damage,
                                      bool verify_blob_crc = false) {
  TempDir copy;
  fs::copy(golden, copy.path, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  const fs::path target = copy.path / file.filename();
  std::string bytes = ReadFile(target);
  damage(&bytes);
  WriteFile(target, bytes);
  StoreOptions options = testing::Options(copy.path);
  options.verify_blob_crc = verify_blob_crc;
  auto store = ContextStore::Open(options);
  if (!store.ok()) return store.status();
  return (*store)->LoadSnapshot("ctx");
}

TEST_CASE("bytes flipped in BlobDB files are detected on load, every time") {
  TempDir golden;
  const ContextSnapshot snap = MakeSnapshot(4, 600, 2, 2, 8);
  {
    auto store = OpenOrDie(golden.path);
    testing::StoreReady(store.get(), "ctx", snap, std::vector<int32_t>(600, 3));
  }
  { REQUIRE(OpenOrDie(golden.path)->LoadSnapshot("ctx").value() == snap); }  // reopen flushes
  std::vector<fs::path> blob_files;
  std::vector<ValueAt> values;
  for (const auto& e : fs::directory_iterator(golden.path)) {
    if (e.path().extension() != ".blob") continue;
    blob_files.push_back(e.path());
    for (const auto& v : FindValues(e.path())) values.push_back(v);
  }
  REQUIRE_FALSE(blob_files.empty());
  // All 9 values (meta, and kv + index per (layer, head)) live in blob files.
  REQUIRE(values.size() == 1 + 2 * 2 * 2);
  std::mt19937_64 rng(5);
  int trials = 0;

  SECTION("a value byte flipped") {
    for (const ValueAt& v : values) {
      for (int i = 0; i < 6; ++i, ++trials) {
        const size_t at = v.value + rng() % v.value_size;
        INFO(v.file.filename() << " byte " << at);
        auto got = LoadDamaged(golden.path, v.file, [&](std::string* b) { (*b)[at] ^= 0x01; });
        CHECK(got.status().code() == StatusCode::kDataLoss);
        CHECK(got.status().message().find("context ctx ") != std::string::npos);
      }
    }
  }
  SECTION("a value byte flipped behind RocksDB's back (its record CRC recomputed)") {
    for (const ValueAt& v : values) {
      for (int i = 0; i < 6; ++i, ++trials) {
        // Payload bytes mostly, header bytes (magic, version, kind, length, checksum) sometimes.
        const size_t at = v.value + (i == 0 ? rng() % 32 : 32 + rng() % (v.value_size - 32));
        if (at >= v.value + 12 && at < v.value + 16) continue;  // reserved header bytes
        INFO(v.file.filename() << " byte " << at << " (value byte " << at - v.value << ")");
        auto got = LoadDamaged(golden.path, v.file, [&](std::string* b) {
          (*b)[at] ^= static_cast<char>(1 << (rng() % 8));
          const char* key = b->data() + v.record + 32;
          const uint32_t crc = Crc32c(b->data() + v.value, v.value_size, Crc32c(key, v.key_size));
          const uint32_t masked = Mask(crc);
          std::memcpy(b->data() + v.record + 28, &masked, 4);
        });
        CHECK(got.status().code() == StatusCode::kDataLoss);
        const std::string& m = got.status().message();
        // Our check, not RocksDB's, and it names the blob.
        CHECK(m.find("Corruption") == std::string::npos);
        const bool named = m.find("context ctx meta blob") != std::string::npos ||
                           (m.find("context ctx layer ") != std::string::npos &&
                            m.find(" kv head ") != std::string::npos &&
                            (m.find(" kv blob") != std::string::npos ||
                             m.find(" index blob") != std::string::npos));
        CHECK(named);
      }
    }
  }
  SECTION("a random byte of a blob file flipped, with RocksDB's CRC checked too: always caught") {
    for (const auto& f : blob_files) {
      const uint64_t size = fs::file_size(f);
      for (int i = 0; i < 60; ++i, ++trials) {
        const uint64_t at = rng() % size;
        const char mask = static_cast<char>(1 + rng() % 255);
        INFO(f.filename() << " byte " << at << " of " << size);
        auto got = LoadDamaged(
            golden.path, f, [&](std::string* b) { (*b)[at] ^= mask; }, /*verify_blob_crc=*/true);
        CHECK(got.status().code() == StatusCode::kDataLoss);
      }
    }
  }
  SECTION("a random byte of a blob file flipped (default options): never altered data") {
    // Our checksums cover every value byte; bytes RocksDB keeps beside a value (the record's copy
    // of the key, its lengths and CRCs) are not read back without verify_blob_crc, so a flip
    // there may leave the load intact -- but then the snapshot is exactly the stored one.
    int in_values = 0, detected = 0;
    for (const auto& f : blob_files) {
      const uint64_t size = fs::file_size(f);
      for (int i = 0; i < 120; ++i, ++trials) {
        const uint64_t at = rng() % size;
        const char mask = static_cast<char>(1 + rng() % 255);
        bool in_value = false;
        for (const ValueAt& v : values) {
          in_value |= v.file == f && at >= v.value && at < v.value + v.value_size;
        }
        INFO(f.filename() << " byte " << at << " of " << size << (in_value ? " (value)" : ""));
        auto got = LoadDamaged(golden.path, f, [&](std::string* b) { (*b)[at] ^= mask; });
        if (in_value) {
          ++in_values;
          CHECK(got.status().code() == StatusCode::kDataLoss);
        } else if (got.ok()) {
          CHECK(*got == snap);
        } else {
          CHECK(got.status().code() == StatusCode::kDataLoss);
        }
        detected += !got.ok();
      }
    }
    CHECK(in_values > 100);
    WARN("default options: " << detected << " of " << trials << " random flips detected, "
                             << in_values << " inside values (all detected)");
  }
  SECTION("the key and header of a blob record flipped (default options): never altered data") {
    for (const ValueAt& v : values) {
      for (size_t at = v.record; at < v.value; ++at, ++trials) {
        INFO(v.file.filename() << " record byte " << at - v.record);
        auto got = LoadDamaged(golden.path, v.file, [&](std::string* b) { (*b)[at] ^= 0x20; });
        if (got.ok()) {
          CHECK(*got == snap);
        } else {
          CHECK(got.status().code() == StatusCode::kDataLoss);
        }
      }
    }
  }
  CHECK(trials >= 50);
}

}  // namespace
}  // namespace sqz
