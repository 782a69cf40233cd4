// sqz-bench-storage: how fast a registered context's snapshot is persisted to and loaded from the
// RocksDB context store on the local disk, next to the disk's own ceiling measured in the same run
// (one plain file of the same bytes, written with fsync and read back cold).
//
// The snapshot is synthetic but has the real layout and sizes (storage never looks at values):
// by default an 8B-shaped context (Llama-3-8B: 32 layers, 8 KV heads, head_dim 128) of 8192
// tokens, fp32 K/V = 2 GiB, 5% centroids and a 1% coarse level.
//
//   sqz-bench-storage [--dir PATH] [--tokens N] [--layers L] [--kv-heads H] [--head-dim D]
//                     [--load-threads T] [--verify-blob-crc 0|1] [--blobs-bypass-wal 0|1]
//                     [--kv-dtype fp32|bf16|both]
// (the last four are StoreOptions, storage/store_options.h). With "both" (the default) the same
// snapshot is stored both ways in one run and the bf16 times are printed against the fp32 ones;
// throughputs count the snapshot's fp32 bytes (what the caller gets back per second).
//
// "Cold" reads drop the files' pages from the page cache first (posix_fadvise DONTNEED after
// fsync), so they come from the disk; "warm" reads repeat from the page cache.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "storage/context_store.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

struct Args {
  std::string dir;
  int64_t tokens = 8192;
  int32_t layers = 32;
  int32_t kv_heads = 8;
  int32_t head_dim = 128;
  int32_t load_threads = 4;
  bool verify_blob_crc = false;
  bool blobs_bypass_wal = true;
  std::string kv_dtype = "both";
};

// xorshift64*: fast deterministic filler.
struct Rng {
  uint64_t s;
  float Next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return static_cast<float>(static_cast<int64_t>((s * 0x2545F4914F6CDD1DULL) >> 40) - (1 << 23)) /
           (1 << 23);
  }
};

ContextSnapshot Synthetic(const Args& a) {
  ContextSnapshot s;
  auto& d = s.dims;
  d.layers = a.layers;
  d.kv_heads = a.kv_heads;
  d.q_heads = 4 * a.kv_heads;
  d.head_dim = a.head_dim;
  d.n_tokens = a.tokens;
  d.sink_len = 4;
  d.window_len = 100;
  d.body_len = a.tokens - 104;
  const int64_t k = std::max<int64_t>(1, d.body_len / 20);
  const int64_t k1 = std::max<int64_t>(1, d.body_len / 100);
  Rng rng{0x9e3779b97f4a7c15ULL};
  auto fill = [&](std::vector<float>* v, int64_t n) {
    v->resize(static_cast<size_t>(n));
    for (auto& x : *v) x = rng.Next();
  };
  s.heads.resize(static_cast<size_t>(d.layers) * d.kv_heads);
  for (auto& h : s.heads) {
    const int64_t dd = d.head_dim;
    fill(&h.sink_k, d.sink_len * dd);
    fill(&h.sink_v, d.sink_len * dd);
    fill(&h.window_k, d.window_len * dd);
    fill(&h.window_v, d.window_len * dd);
    fill(&h.body_k, d.body_len * dd);
    fill(&h.body_v, d.body_len * dd);
    fill(&h.centroids, k * dd);
    fill(&h.coarse_centroids, k1 * dd);
    h.body_positions.resize(d.body_len);
    for (int64_t i = 0; i < d.body_len; ++i) {
      h.body_positions[i] = static_cast<int32_t>(d.sink_len + (i * 7919) % d.body_len);
    }
    if (std::gcd(int64_t{7919}, d.body_len) != 1) {
      for (int64_t i = 0; i < d.body_len; ++i) h.body_positions[i] = d.sink_len + i;
    }
    h.offsets.resize(k + 1);
    h.counts.resize(k);
    for (int64_t c = 0; c <= k; ++c) h.offsets[c] = static_cast<int32_t>(c * d.body_len / k);
    for (int64_t c = 0; c < k; ++c) h.counts[c] = h.offsets[c + 1] - h.offsets[c];
    h.coarse_offsets.resize(k1 + 1);
    for (int64_t c = 0; c <= k1; ++c) h.coarse_offsets[c] = static_cast<int32_t>(c * k / k1);
    h.coarse_members.resize(k);
    for (int64_t c = 0; c < k; ++c) h.coarse_members[c] = static_cast<int32_t>(c);
  }
  s.thresholds_global.assign(kNumGqaReduce * kNumSparsities, 1e-4f);
  s.thresholds_layer.assign(static_cast<size_t>(kNumGqaReduce) * d.layers * kNumSparsities, 1e-4f);
  return s;
}

void DropCache(const fs::path& path) {
  auto drop = [](const fs::path& f) {
    const int fd = ::open(f.c_str(), O_RDONLY);
    if (fd < 0) return;
    (void)::fdatasync(fd);
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  };
  if (fs::is_directory(path)) {
    for (const auto& e : fs::directory_iterator(path)) drop(e.path());
  } else {
    drop(path);
  }
}

// The disk's ceiling: the snapshot's float arrays written to one file (+ fsync), read back cold.
void Baseline(const ContextSnapshot& s, const fs::path& file, double* write_gbs, double* read_gbs) {
  const int64_t bytes = SnapshotBytes(s);
  auto t = Clock::now();
  {
    const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    SQZ_CHECK(fd >= 0) << "cannot create " << file;
    for (const auto& h : s.heads) {
      for (const auto* v : {&h.sink_k, &h.sink_v, &h.window_k, &h.window_v, &h.body_k, &h.body_v,
                            &h.centroids, &h.coarse_centroids}) {
        SQZ_CHECK(::write(fd, v->data(), v->size() * 4) == static_cast<ssize_t>(v->size() * 4));
      }
    }
    SQZ_CHECK(::fsync(fd) == 0);
    ::close(fd);
  }
  *write_gbs = static_cast<double>(bytes) / Seconds(t) / 1e9;
  DropCache(file);
  std::vector<char> buf(64 << 20);
  t = Clock::now();
  const int fd = ::open(file.c_str(), O_RDONLY);
  int64_t total = 0;
  for (ssize_t n; (n = ::read(fd, buf.data(), buf.size())) > 0;) total += n;
  ::close(fd);
  *read_gbs = static_cast<double>(total) / Seconds(t) / 1e9;
  fs::remove(file);
}

int Run(const Args& a) {
  const fs::path dir =
      a.dir.empty() ? fs::temp_directory_path() / "sqz-bench-storage" : fs::path(a.dir);
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto t = Clock::now();
  const ContextSnapshot snap = Synthetic(a);
  const int64_t bytes = SnapshotBytes(snap);
  std::printf(
      "snapshot: %d layers x %d kv heads, head_dim %d, %lld tokens (fp32): %.3f GiB, "
      "%zu blobs (built in %.1f s)\n",
      a.layers, a.kv_heads, a.head_dim, static_cast<long long>(a.tokens),
      static_cast<double>(bytes) / (1 << 30), 1 + 2 * snap.heads.size(), Seconds(t));
  SQZ_CHECK(ValidateSnapshot(snap).ok());

  double disk_write = 0, disk_read = 0;
  Baseline(snap, dir / "baseline.bin", &disk_write, &disk_read);
  std::printf("disk ceiling (one file, same bytes):  write+fsync %.2f GB/s, cold read %.2f GB/s\n",
              disk_write, disk_read);

  struct Times {
    double persist = 0, cold = 0, warm = 0, disk_gib = 0;
  };
  std::vector<std::pair<std::string, Times>> runs;
  for (const char* name : {"fp32", "bf16"}) {
    const std::string dtype = name;
    if (a.kv_dtype != "both" && a.kv_dtype != dtype) continue;
    Times tm;
    StoreOptions o;
    o.path = (dir / ("db-" + dtype)).string();
    o.load_threads = a.load_threads;
    o.verify_blob_crc = a.verify_blob_crc;
    o.blobs_bypass_wal = a.blobs_bypass_wal;
    o.kv_dtype = dtype;
    std::printf("\nstore options: kv_dtype %s, blobs_bypass_wal %d, verify_blob_crc %d, "
                "load_threads %d\n",
                dtype.c_str(), o.blobs_bypass_wal, o.verify_blob_crc, o.load_threads);
    const std::vector<int32_t> tokens(static_cast<size_t>(a.tokens), 1);
    double put_s = 0;
    ContextSnapshot expected = snap;
    {
      auto store = std::move(ContextStore::Open(o)).value();
      store->RoundForStorage(&expected);
      ContextRecord r;
      r.id = "bench";
      r.token_count = a.tokens;
      SQZ_CHECK(store->CreateRecord(r, tokens).ok());
      t = Clock::now();
      SQZ_CHECK(store->PutSnapshot(snap, &r).ok());
      put_s = Seconds(t);
      const Status s = store->CommitReady(r);
      SQZ_CHECK(s.ok()) << s.ToString();
      tm.persist = Seconds(t);
      tm.disk_gib = static_cast<double>(store->DiskBytes()) / (1 << 30);
      std::printf("store on disk: %.3f GiB (SST + blob files)\n", tm.disk_gib);
    }
    DropCache(o.path);
    t = Clock::now();
    auto store = std::move(ContextStore::Open(o)).value();
    const double open_s = Seconds(t);
    t = Clock::now();
    auto cold = store->LoadSnapshot("bench");
    tm.cold = Seconds(t);
    SQZ_CHECK(cold.ok()) << cold.status().ToString();
    SQZ_CHECK(*cold == expected) << "loaded snapshot differs";
    cold = Status(StatusCode::kCancelled, "released");
    t = Clock::now();
    auto warm = store->LoadSnapshot("bench");
    tm.warm = Seconds(t);
    SQZ_CHECK(warm.ok());
    const double gb = static_cast<double>(bytes) / 1e9;
    std::printf(
        "persist (PutSnapshot %.2f s + CommitReady %.2f s): %.2f s = %.2f GB/s (%.2fx the "
        "disk's write+fsync)\n",
        put_s, tm.persist - put_s, tm.persist, gb / tm.persist, gb / tm.persist / disk_write);
    std::printf("reopen: %.2f s\n", open_s);
    std::printf("load cold: %.2f s = %.2f GB/s (%.2fx the disk's cold read)\n", tm.cold,
                gb / tm.cold, gb / tm.cold / disk_read);
    std::printf("load warm: %.2f s = %.2f GB/s\n", tm.warm, gb / tm.warm);
    store.reset();
    fs::remove_all(o.path);
    runs.emplace_back(dtype, tm);
  }
  if (runs.size() == 2) {
    const Times& f = runs[0].second;
    const Times& b = runs[1].second;
    std::printf(
        "\nbf16 against fp32 (same run): disk %.2fx the bytes, persist %.2fx faster, cold load "
        "%.2fx faster, warm load %.2fx faster\n",
        b.disk_gib / f.disk_gib, f.persist / b.persist, f.cold / b.cold, f.warm / b.warm);
  }
  fs::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace sqz

int main(int argc, char** argv) {
  sqz::Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--dir")
      a.dir = v;
    else if (k == "--tokens")
      a.tokens = std::atoll(v);
    else if (k == "--layers")
      a.layers = std::atoi(v);
    else if (k == "--kv-heads")
      a.kv_heads = std::atoi(v);
    else if (k == "--head-dim")
      a.head_dim = std::atoi(v);
    else if (k == "--load-threads")
      a.load_threads = std::atoi(v);
    else if (k == "--verify-blob-crc")
      a.verify_blob_crc = std::atoi(v) != 0;
    else if (k == "--blobs-bypass-wal")
      a.blobs_bypass_wal = std::atoi(v) != 0;
    else if (k == "--kv-dtype")
      a.kv_dtype = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  if ((argc - 1) % 2 != 0 || a.tokens < 105 || a.layers < 1 || a.kv_heads < 1 || a.head_dim < 1 ||
      (a.kv_dtype != "fp32" && a.kv_dtype != "bf16" && a.kv_dtype != "both")) {
    std::fprintf(stderr,
                 "usage: sqz-bench-storage [--dir PATH] [--tokens N>=105] [--layers L] "
                 "[--kv-heads H] [--head-dim D] [--load-threads T] [--verify-blob-crc 0|1] "
                 "[--blobs-bypass-wal 0|1] [--kv-dtype fp32|bf16|both]\n");
    return 2;
  }
  return sqz::Run(a);
}
