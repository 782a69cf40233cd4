#include "storage/blob_codec.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
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
    // Every single-bit change is caught (the encoding field too: an index blob has none).
    for (size_t at = 0; at < sealed.size(); ++at) {
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

TEST_CASE("bf16 rounding is to nearest even; NaN and infinities survive") {
  auto bits = [](float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
  };
  auto from = [](uint32_t u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
  };
  CHECK(RoundToBf16(1.0f) == 1.0f);
  CHECK(RoundToBf16(-2.5f) == -2.5f);
  CHECK(bits(RoundToBf16(from(0x3f808000u))) == 0x3f800000u);  // tie, even below
  CHECK(bits(RoundToBf16(from(0x3f818000u))) == 0x3f820000u);  // tie, even above
  CHECK(bits(RoundToBf16(from(0x3f808001u))) == 0x3f810000u);  // just above the tie
  CHECK(bits(RoundToBf16(from(0x3f807fffu))) == 0x3f800000u);  // just below
  CHECK(std::isinf(RoundToBf16(INFINITY)));
  CHECK(std::isinf(RoundToBf16(from(0x7f7fffffu))));  // the largest float rounds to infinity
  CHECK(std::isnan(RoundToBf16(from(0x7f800001u))));  // a NaN whose payload is in the low half
  CHECK(RoundToBf16(0.0f) == 0.0f);
}

TEST_CASE("kv payloads in bf16: half the element bytes, decode to the rounded values") {
  for (int64_t n : {21, 129}) {
    const ContextSnapshot snap = testing::MakeSnapshot(static_cast<uint32_t>(n), n, 2, 2, 8);
    ContextSnapshot rounded = snap;
    RoundKvToBf16(&rounded);
    for (size_t i = 0; i < snap.heads.size(); ++i) {
      const HeadIndex& h = snap.heads[i];
      const std::string f32 = EncodeKv(h);
      const std::string bf16 = EncodeKv(h, false, KvDType::kBf16);
      const size_t elems = h.sink_k.size() + h.sink_v.size() + h.window_k.size() +
                           h.window_v.size() + h.body_k.size() + h.body_v.size();
      CHECK(f32.size() - bf16.size() == 2 * elems);
      HeadIndex got;
      REQUIRE(DecodeKv(bf16, &got, KvDType::kBf16).ok());
      CHECK(got.body_k == rounded.heads[i].body_k);
      CHECK(got.sink_v == rounded.heads[i].sink_v);
      CHECK(got.window_k == rounded.heads[i].window_k);
      // Read with the wrong element type, the payload does not parse.
      HeadIndex wrong;
      CHECK(DecodeKv(bf16, &wrong, KvDType::kF32).code() == StatusCode::kDataLoss);
      // Sealed with its encoding, the blob opens to it; other kinds have no such encoding.
      const std::string sealed = Seal(Kind::kKv, bf16, static_cast<uint32_t>(KvDType::kBf16));
      uint32_t encoding = 7;
      REQUIRE(Open(sealed, Kind::kKv, "b", nullptr, &encoding).ok());
      CHECK(encoding == static_cast<uint32_t>(KvDType::kBf16));
      const Status s = Open(Seal(Kind::kIndex, "abc", 1), Kind::kIndex, "b", nullptr).status();
      CHECK(s.code() == StatusCode::kDataLoss);
      CHECK(Contains(s.message(), "encoding 1 is unknown"));
      CHECK(Open(Seal(Kind::kKv, bf16, 2), Kind::kKv, "b", nullptr).status().code() ==
            StatusCode::kDataLoss);
    }
  }
}

}  // namespace
}  // namespace sqz::blob
