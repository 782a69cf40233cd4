#include "storage/blob_codec.h"

#include <xxhash.h>

#include <cstring>

namespace sqz::blob {
namespace {

constexpr char kMagic[4] = {'S', 'Q', 'Z', 'B'};
constexpr uint32_t kVersion = 1;

class Writer {
 public:
  // Starts with the header's bytes reserved when asked; `capacity` avoids regrowth.
  Writer(bool reserve_header, size_t capacity) {
    out_.reserve(capacity + kHeaderBytes);
    if (reserve_header) out_.resize(kHeaderBytes);
  }
  template <typename T>
  void Array(const std::vector<T>& v) {
    Scalar<uint64_t>(v.size());
    out_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  // A float array stored as bf16 (the upper halves of the rounded floats).
  void ArrayBf16(const std::vector<float>& v) {
    Scalar<uint64_t>(v.size());
    const size_t at = out_.size();
    out_.resize(at + v.size() * 2);
    char* dst = out_.data() + at;
    for (size_t i = 0; i < v.size(); ++i) {
      uint32_t u;
      const float r = RoundToBf16(v[i]);
      std::memcpy(&u, &r, 4);
      const uint16_t half = static_cast<uint16_t>(u >> 16);
      std::memcpy(dst + 2 * i, &half, 2);
    }
  }
  template <typename T>
  void Scalar(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  template <typename T>
  bool Array(std::vector<T>* v) {
    uint64_t n = 0;
    if (!Scalar(&n) || n > (in_.size() - pos_) / sizeof(T)) return false;
    v->resize(n);
    std::memcpy(v->data(), in_.data() + pos_, n * sizeof(T));
    pos_ += n * sizeof(T);
    return true;
  }
  bool ArrayBf16(std::vector<float>* v) {
    uint64_t n = 0;
    if (!Scalar(&n) || n > (in_.size() - pos_) / 2) return false;
    v->resize(n);
    const char* src = in_.data() + pos_;
    for (size_t i = 0; i < n; ++i) {
      uint16_t half;
      std::memcpy(&half, src + 2 * i, 2);
      const uint32_t u = static_cast<uint32_t>(half) << 16;
      std::memcpy(&(*v)[i], &u, 4);
    }
    pos_ += n * 2;
    return true;
  }
  template <typename T>
  bool Scalar(T* v) {
    if (in_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(v, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool done() const { return pos_ == in_.size(); }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

Status Malformed(const char* what) {
  return DataLossError(std::string("malformed ") + what + " blob payload");
}

}  // namespace

uint64_t Checksum(std::string_view payload, uint32_t encoding) {
  return XXH3_64bits_withSeed(payload.data(), payload.size(), encoding);
}

float RoundToBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    u |= 0x00400000u;  // NaN: keep it a (quiet) NaN whatever its payload
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
  }
  u &= 0xffff0000u;
  std::memcpy(&x, &u, 4);
  return x;
}

void RoundKvToBf16(ContextSnapshot* snapshot) {
  for (HeadIndex& h : snapshot->heads) {
    for (auto* v : {&h.sink_k, &h.sink_v, &h.window_k, &h.window_v, &h.body_k, &h.body_v}) {
      for (float& x : *v) x = RoundToBf16(x);
    }
  }
}

uint64_t SealReserved(Kind kind, std::string* buffer, uint32_t encoding) {
  SQZ_CHECK(buffer->size() >= kHeaderBytes) << "SealReserved needs the header's bytes reserved";
  char* out = buffer->data();
  const std::string_view payload = std::string_view(*buffer).substr(kHeaderBytes);
  const uint32_t k = static_cast<uint32_t>(kind);
  const uint64_t len = payload.size();
  const uint64_t sum = Checksum(payload, encoding);
  std::memcpy(out, kMagic, 4);
  std::memcpy(out + 4, &kVersion, 4);
  std::memcpy(out + 8, &k, 4);
  std::memcpy(out + 12, &encoding, 4);
  std::memcpy(out + 16, &len, 8);
  std::memcpy(out + 24, &sum, 8);
  return sum;
}

std::string Seal(Kind kind, std::string_view payload, uint32_t encoding) {
  std::string out(kHeaderBytes, '\0');
  out += payload;
  SealReserved(kind, &out, encoding);
  return out;
}

StatusOr<std::string_view> Open(std::string_view blob, Kind kind, const std::string& what,
                                uint64_t* checksum, uint32_t* encoding) {
  if (blob.size() < kHeaderBytes || std::memcmp(blob.data(), kMagic, 4) != 0) {
    return DataLossError(what + ": blob header is corrupt (bad magic or truncated)");
  }
  uint32_t version, k, enc;
  uint64_t len, sum;
  std::memcpy(&version, blob.data() + 4, 4);
  std::memcpy(&k, blob.data() + 8, 4);
  std::memcpy(&enc, blob.data() + 12, 4);
  std::memcpy(&len, blob.data() + 16, 8);
  std::memcpy(&sum, blob.data() + 24, 8);
  if (version != kVersion) {
    return DataLossError(what + ": blob format version " + std::to_string(version) + " is not " +
                         std::to_string(kVersion));
  }
  if (k != static_cast<uint32_t>(kind)) {
    return DataLossError(what + ": blob kind " + std::to_string(k) + " where " +
                         std::to_string(static_cast<uint32_t>(kind)) + " was expected");
  }
  if (len != blob.size() - kHeaderBytes) {
    return DataLossError(what + ": blob length " + std::to_string(blob.size() - kHeaderBytes) +
                         " differs from its header's " + std::to_string(len));
  }
  const uint32_t max_encoding =
      kind == Kind::kKv ? static_cast<uint32_t>(KvDType::kBf16) : uint32_t{0};
  if (enc > max_encoding) {
    return DataLossError(what + ": blob encoding " + std::to_string(enc) +
                         " is unknown for its kind");
  }
  std::string_view payload = blob.substr(kHeaderBytes);
  if (Checksum(payload, enc) != sum) return DataLossError(what + ": blob checksum mismatch");
  if (checksum) *checksum = sum;
  if (encoding) *encoding = enc;
  return payload;
}

template <typename... V>
size_t ArraysBytes(const V&... v) {
  return ((sizeof(uint64_t) + v.size() * sizeof(typename V::value_type)) + ...);
}

std::string EncodeKv(const HeadIndex& h, bool reserve_header, KvDType dtype) {
  const size_t f32_bytes =
      ArraysBytes(h.sink_k, h.sink_v, h.window_k, h.window_v, h.body_k, h.body_v);
  Writer w(reserve_header, dtype == KvDType::kBf16 ? f32_bytes / 2 + 48 : f32_bytes);
  for (const auto* v : {&h.sink_k, &h.sink_v, &h.window_k, &h.window_v, &h.body_k, &h.body_v}) {
    if (dtype == KvDType::kBf16) {
      w.ArrayBf16(*v);
    } else {
      w.Array(*v);
    }
  }
  return w.Take();
}

Status DecodeKv(std::string_view payload, HeadIndex* h, KvDType dtype) {
  Reader r(payload);
  for (auto* v : {&h->sink_k, &h->sink_v, &h->window_k, &h->window_v, &h->body_k, &h->body_v}) {
    if (!(dtype == KvDType::kBf16 ? r.ArrayBf16(v) : r.Array(v))) return Malformed("kv");
  }
  return r.done() ? OkStatus() : Malformed("kv");
}

std::string EncodeIndex(const HeadIndex& h, bool reserve_header) {
  Writer w(reserve_header, ArraysBytes(h.body_positions, h.centroids, h.counts, h.offsets,
                                       h.coarse_centroids, h.coarse_offsets, h.coarse_members));
  w.Array(h.body_positions);
  w.Array(h.centroids);
  w.Array(h.counts);
  w.Array(h.offsets);
  w.Array(h.coarse_centroids);
  w.Array(h.coarse_offsets);
  w.Array(h.coarse_members);
  return w.Take();
}

Status DecodeIndex(std::string_view payload, HeadIndex* h) {
  Reader r(payload);
  const bool ok = r.Array(&h->body_positions) && r.Array(&h->centroids) && r.Array(&h->counts) &&
                  r.Array(&h->offsets) && r.Array(&h->coarse_centroids) &&
                  r.Array(&h->coarse_offsets) && r.Array(&h->coarse_members) && r.done();
  return ok ? OkStatus() : Malformed("index");
}

std::string EncodeMeta(const ContextSnapshot& s, bool reserve_header) {
  Writer w(reserve_header, 256 + ArraysBytes(s.thresholds_global, s.thresholds_layer));
  w.Scalar<int32_t>(s.format_version);
  const auto& d = s.dims;
  w.Scalar<int32_t>(d.layers);
  w.Scalar<int32_t>(d.kv_heads);
  w.Scalar<int32_t>(d.q_heads);
  w.Scalar<int32_t>(d.head_dim);
  w.Scalar<int64_t>(d.n_tokens);
  w.Scalar<int64_t>(d.sink_len);
  w.Scalar<int64_t>(d.window_len);
  w.Scalar<int64_t>(d.body_len);
  const auto& o = s.options;
  w.Scalar<int64_t>(o.sink_tokens);
  w.Scalar<int64_t>(o.observation_window);
  w.Scalar<double>(o.centroid_fraction);
  w.Scalar<double>(o.coarse_fraction);
  w.Scalar<int32_t>(o.kmeans_iterations);
  w.Scalar<double>(o.kmeans_tolerance);
  w.Scalar<uint64_t>(o.kmeans_seed);
  w.Scalar<int64_t>(o.prefill_chunk_tokens);
  w.Array(s.thresholds_global);
  w.Array(s.thresholds_layer);
  return w.Take();
}

Status DecodeMeta(std::string_view payload, ContextSnapshot* s) {
  Reader r(payload);
  auto& d = s->dims;
  auto& o = s->options;
  const bool ok = r.Scalar(&s->format_version) && r.Scalar(&d.layers) && r.Scalar(&d.kv_heads) &&
                  r.Scalar(&d.q_heads) && r.Scalar(&d.head_dim) && r.Scalar(&d.n_tokens) &&
                  r.Scalar(&d.sink_len) && r.Scalar(&d.window_len) && r.Scalar(&d.body_len) &&
                  r.Scalar(&o.sink_tokens) && r.Scalar(&o.observation_window) &&
                  r.Scalar(&o.centroid_fraction) && r.Scalar(&o.coarse_fraction) &&
                  r.Scalar(&o.kmeans_iterations) && r.Scalar(&o.kmeans_tolerance) &&
                  r.Scalar(&o.kmeans_seed) && r.Scalar(&o.prefill_chunk_tokens) &&
                  r.Array(&s->thresholds_global) && r.Array(&s->thresholds_layer) && r.done();
  if (!ok) return Malformed("meta");
  if (s->format_version != ContextSnapshot::kFormatVersion) {
    return DataLossError("snapshot format version " + std::to_string(s->format_version) +
                         " is not " + std::to_string(ContextSnapshot::kFormatVersion));
  }
  return OkStatus();
}

}  // namespace sqz::blob
