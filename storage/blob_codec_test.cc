#include "storage/blob_codec.h"

#include <catch2/catch.hpp>
#include <random>

#include "storage/test_util.h"

namespace sqz::blob {
namespace {

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST_CASE("sealed blobs open to their payload; every header and payload change is DATA_LOSS") {
  std::mt19937 rng(1);
  for (size_t n : {0, 1, 3, 127, 129, 4096}) {
    INFO("payload of " << n << " bytes");
    std::string payload(n, '\0');
    for (auto& c : payload) c = static_cast<char>(rng());
    const std::string sealed = Seal(Kind::kIndex, payload);
    REQUIRE(sealed.size() == kHeaderBytes + n);
    uint64_t sum = 0;
    auto opened = Open(sealed, Kind::kIndex, "blob X", &sum);
    REQUIRE(opened.ok());
    CHECK(*opened == payload);
    CHECK(sum == Checksum(payload));
    CHECK(Open(sealed, Kind::kKv, "blob X", nullptr).status().code() == StatusCode::kDataLoss);
    // Every single-bit change outside the reserved bytes is caught.
    for (size_t at = 0; at < sealed.size(); ++at) {
      if (at >= 12 && at < 16) continue;
      std::string bad = sealed;
      bad[at] ^= static_cast<char>(1 << (at % 8));
      const Status s = Open(bad, Kind::kIndex, "blob X", nullptr).status();
      INFO("bit flip at " << at);
      CHECK(s.code() == StatusCode::kDataLoss);
      CHECK(s.message().rfind("blob X: ", 0) == 0);
    }
    for (size_t len : {size_t{0}, size_t{3}, kHeaderBytes - 1}) {
      CHECK(Contains(Open(sealed.substr(0, len), Kind::kIndex, "b", nullptr).status().message(),
                     "truncated"));
    }
    if (n > 0) {
      CHECK(Contains(
          Open(sealed.substr(0, sealed.size() - 1), Kind::kIndex, "b", nullptr).status().message(),
          "length"));
    }
    CHECK(Contains(Open(sealed + "x", Kind::kIndex, "b", nullptr).status().message(), "length"));
  }
}

TEST_CASE("kv, index and meta payloads decode to what was encoded") {
  for (int64_t n : {21, 127, 129}) {
    const ContextSnapshot snap = testing::MakeSnapshot(static_cast<uint32_t>(n), n, 2, 3, 4);
    ContextSnapshot decoded;
    REQUIRE(DecodeMeta(EncodeMeta(snap), &decoded).ok());
    CHECK(decoded.dims == snap.dims);
    CHECK(decoded.options == snap.options);
    CHECK(decoded.thresholds_global == snap.thresholds_global);
    CHECK(decoded.thresholds_layer == snap.thresholds_layer);
    for (const HeadIndex& h : snap.heads) {
      HeadIndex kv, index;
      REQUIRE(DecodeKv(EncodeKv(h), &kv).ok());
      REQUIRE(DecodeIndex(EncodeIndex(h), &index).ok());
      CHECK(kv.sink_k == h.sink_k);
      CHECK(kv.window_v == h.window_v);
      CHECK(kv.body_k == h.body_k);
      CHECK(kv.body_v == h.body_v);
      CHECK(index.centroids == h.centroids);
      CHECK(index.offsets == h.offsets);
      CHECK(index.body_positions == h.body_positions);
      CHECK(index.coarse_members == h.coarse_members);
    }
  }
}

TEST_CASE("malformed payloads are DATA_LOSS, never a crash or a short read") {
  const ContextSnapshot snap = testing::MakeSnapshot(3, 64, 1, 1, 4);
  const std::string kv = EncodeKv(snap.heads[0]);
  const std::string index = EncodeIndex(snap.heads[0]);
  const std::string meta = EncodeMeta(snap);
  HeadIndex h;
  ContextSnapshot s;
  // Every truncation, and one trailing byte.
  for (size_t len = 0; len < kv.size(); len += 7) {
    CHECK(DecodeKv(std::string_view(kv).substr(0, len), &h).code() == StatusCode::kDataLoss);
  }
  for (size_t len = 0; len < index.size(); len += 3) {
    CHECK(DecodeIndex(std::string_view(index).substr(0, len), &h).code() == StatusCode::kDataLoss);
  }
  for (size_t len = 0; len < meta.size(); ++len) {
    CHECK(DecodeMeta(std::string_view(meta).substr(0, len), &s).code() == StatusCode::kDataLoss);
  }
  CHECK(DecodeKv(kv + "x", &h).code() == StatusCode::kDataLoss);
  CHECK(DecodeIndex(index + "x", &h).code() == StatusCode::kDataLoss);
  CHECK(DecodeMeta(meta + "x", &s).code() == StatusCode::kDataLoss);
  // An array length that would run past the end (or overflow a multiplication).
  for (uint64_t huge : {uint64_t{1} << 62, ~uint64_t{0}, uint64_t{kv.size()}}) {
    std::string bad = kv;
    std::memcpy(bad.data(), &huge, sizeof(huge));
    CHECK(DecodeKv(bad, &h).code() == StatusCode::kDataLoss);
  }
  // A snapshot format this build does not know.
  std::string future = meta;
  const int32_t v = ContextSnapshot::kFormatVersion + 1;
  std::memcpy(future.data(), &v, sizeof(v));
  const Status st = DecodeMeta(future, &s);
  CHECK(st.code() == StatusCode::kDataLoss);
  CHECK(Contains(st.message(), "snapshot format version"));
}

}  // namespace
}  // namespace sqz::blob
