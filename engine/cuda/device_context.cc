#include "engine/cuda/device_context.h"

#include <algorithm>
#include <cstring>

#include "kernels/cuda/cuda_status.h"

namespace sqz {
namespace {

int64_t Align256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

// Index parts in order, with their bytes for `s`.
enum IndexPartId {
  kCentroids,
  kCounts,
  kOffsets,
  kCoarseCentroids,
  kCoarseOffsets,
  kMembers,
  kParts
};

int64_t PartBytes(const DeviceContextShape& s, int part) {
  const int64_t h = s.heads(), d = s.head_dim;
  switch (part) {
    case kCentroids:
      return h * s.k * d * 2;
    case kCounts:
      return h * s.k * 4;
    case kOffsets:
      return h * (s.k + 1) * 4;
    case kCoarseCentroids:
      return s.k1 > 0 ? h * s.k1 * d * 2 : 0;
    case kCoarseOffsets:
      return s.k1 > 0 ? h * (s.k1 + 1) * 4 : 0;
    case kMembers:
      return s.k1 > 0 ? h * s.k * 4 : 0;
  }
  return 0;
}

int64_t PartOffset(const DeviceContextShape& s, int part) {
  int64_t off = 0;
  for (int p = 0; p < part; ++p) off += Align256(PartBytes(s, p));
  return off;
}

void Mix(uint64_t* h, uint64_t x) { *h ^= x + 0x9e3779b97f4a7c15ull + (*h << 6) + (*h >> 2); }

void MixFloats(uint64_t* h, const std::vector<float>& v, size_t max_n) {
  Mix(h, v.size());
  const size_t n = std::min(v.size(), max_n);
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], 4);
    Mix(h, bits);
  }
  if (v.size() > n) {  // and the tail
    for (size_t i = v.size() - std::min(v.size() - n, max_n); i < v.size(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &v[i], 4);
      Mix(h, bits);
    }
  }
}

}  // namespace

int64_t DeviceContextShape::KvBytes() const {
  return 2 * Align256(heads() * n_tokens * head_dim * kv_elem_bytes);
}

int64_t DeviceContextShape::IndexBytes() const { return PartOffset(*this, kParts); }

StatusOr<DeviceContextShape> ShapeOf(const ContextSnapshot& snapshot, int kv_elem_bytes) {
  const SnapshotDims& d = snapshot.dims;
  DeviceContextShape s;
  s.layers = d.layers;
  s.kv_heads = d.kv_heads;
  s.head_dim = d.head_dim;
  s.n_tokens = d.n_tokens;
  s.sink_len = d.sink_len;
  s.window_len = d.window_len;
  s.kv_elem_bytes = kv_elem_bytes;
  if (static_cast<int64_t>(snapshot.heads.size()) != s.heads() || s.heads() == 0) {
    return InvalidArgumentError("context snapshot: " + std::to_string(snapshot.heads.size()) +
                                " head indexes for " + std::to_string(s.heads()) +
                                " (layer, kv head) pairs");
  }
  s.k = static_cast<int64_t>(snapshot.heads[0].counts.size());
  s.k1 = snapshot.heads[0].coarse_offsets.empty()
             ? 0
             : static_cast<int64_t>(snapshot.heads[0].coarse_offsets.size()) - 1;
  for (size_t i = 0; i < snapshot.heads.size(); ++i) {
    const HeadIndex& x = snapshot.heads[i];
    const int64_t k1 = x.coarse_offsets.empty() ? 0 : int64_t(x.coarse_offsets.size()) - 1;
    if (static_cast<int64_t>(x.counts.size()) != s.k || k1 != s.k1) {
      return InvalidArgumentError("context snapshot: head " + std::to_string(i) + " has " +
                                  std::to_string(x.counts.size()) + " clusters (" +
                                  std::to_string(k1) + " coarse), head 0 has " +
                                  std::to_string(s.k) + " (" + std::to_string(s.k1) +
                                  "); the device layout needs the same counts for every head");
    }
  }
  if (s.k < 1 && s.body_len() > 0) {
    return InvalidArgumentError("context snapshot: a body without clusters");
  }
  return s;
}

StatusOr<std::unique_ptr<DeviceContext>> DeviceContext::Allocate(const DeviceContextShape& shape) {
  std::unique_ptr<DeviceContext> c(new DeviceContext(shape));
  SQZ_ASSIGN_OR_RETURN(c->kv_, DeviceMemory::Allocate(shape.KvBytes(), "a fixed context's K/V"));
  SQZ_ASSIGN_OR_RETURN(c->index_,
                       DeviceMemory::Allocate(shape.IndexBytes(), "a fixed context's index"));
  return c;
}

char* DeviceContext::IndexPart(int part) const {
  if (PartBytes(shape_, part) == 0) return nullptr;
  return index_.get<char>() + PartOffset(shape_, part);
}

__nv_bfloat16* DeviceContext::centroids() const {
  return reinterpret_cast<__nv_bfloat16*>(IndexPart(kCentroids));
}
int32_t* DeviceContext::counts() const { return reinterpret_cast<int32_t*>(IndexPart(kCounts)); }
int32_t* DeviceContext::offsets() const { return reinterpret_cast<int32_t*>(IndexPart(kOffsets)); }
__nv_bfloat16* DeviceContext::coarse_centroids() const {
  return reinterpret_cast<__nv_bfloat16*>(IndexPart(kCoarseCentroids));
}
int32_t* DeviceContext::coarse_offsets() const {
  return reinterpret_cast<int32_t*>(IndexPart(kCoarseOffsets));
}
int32_t* DeviceContext::coarse_members() const {
  return reinterpret_cast<int32_t*>(IndexPart(kMembers));
}

const void* DeviceContext::layer_k(int layer) const {
  const int64_t per_layer =
      int64_t{shape_.kv_heads} * shape_.n_tokens * shape_.head_dim * shape_.kv_elem_bytes;
  return kv_.get<char>() + layer * per_layer;
}

const void* DeviceContext::layer_v(int layer) const {
  const int64_t per_layer =
      int64_t{shape_.kv_heads} * shape_.n_tokens * shape_.head_dim * shape_.kv_elem_bytes;
  return kv_.get<char>() + KvHalf() + layer * per_layer;
}

cuda::SqueezeLayerView DeviceContext::view(int layer) const {
  const DeviceContextShape& s = shape_;
  const int64_t h0 = int64_t{layer} * s.kv_heads, d = s.head_dim;
  cuda::SqueezeLayerView v;
  v.n_tokens = static_cast<int32_t>(s.n_tokens);
  v.sink_len = static_cast<int32_t>(s.sink_len);
  v.window_len = static_cast<int32_t>(s.window_len);
  v.num_clusters = static_cast<int32_t>(s.k);
  v.num_coarse = static_cast<int32_t>(s.k1);
  v.centroids = centroids() + h0 * s.k * d;
  v.counts = counts() + h0 * s.k;
  v.offsets = offsets() + h0 * (s.k + 1);
  if (s.k1 > 0) {
    v.coarse_centroids = coarse_centroids() + h0 * s.k1 * d;
    v.coarse_offsets = coarse_offsets() + h0 * (s.k1 + 1);
    v.coarse_members = coarse_members() + h0 * s.k;
  }
  return v;
}

Status DeviceContext::ReadBounds(cudaStream_t stream) {
  std::vector<int32_t> counts(shape_.heads() * shape_.k);
  SQZ_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(counts.data(), this->counts(), counts.size() * 4,
                                           cudaMemcpyDeviceToHost, stream),
                           "DeviceContext: cluster sizes");
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "DeviceContext: cluster sizes");
  largest_cluster_ = 0;
  for (int32_t c : counts) largest_cluster_ = std::max<int64_t>(largest_cluster_, c);
  return OkStatus();
}

StatusOr<std::unique_ptr<DeviceContext>> DeviceContext::Upload(const ContextSnapshot& snapshot,
                                                               int kv_elem_bytes,
                                                               cudaStream_t stream) {
  SQZ_ASSIGN_OR_RETURN(DeviceContextShape shape, ShapeOf(snapshot, kv_elem_bytes));
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<DeviceContext> c, Allocate(shape));
  const int64_t n = shape.n_tokens, d = shape.head_dim, S = shape.sink_len, W = shape.window_len,
                B = shape.body_len();
  const int64_t layer_elems = int64_t{shape.kv_heads} * n * d;
  // One layer of K or V at a time through a host staging buffer of the element type.
  std::vector<char> stage(layer_elems * kv_elem_bytes);
  auto put = [&](const std::vector<float>& src, int64_t row0, int64_t rows, int64_t head) {
    const int64_t base = (head * n + row0) * d;
    if (kv_elem_bytes == 4) {
      std::memcpy(stage.data() + base * 4, src.data(), rows * d * 4);
    } else {
      auto* dst = reinterpret_cast<__nv_bfloat16*>(stage.data()) + base;
      for (int64_t i = 0; i < rows * d; ++i) dst[i] = __float2bfloat16(src[i]);
    }
  };
  for (int part = 0; part < 2; ++part) {
    for (int layer = 0; layer < shape.layers; ++layer) {
      for (int h = 0; h < shape.kv_heads; ++h) {
        const HeadIndex& x = snapshot.head(layer, h);
        put(part == 0 ? x.sink_k : x.sink_v, 0, S, h);
        put(part == 0 ? x.body_k : x.body_v, S, B, h);
        put(part == 0 ? x.window_k : x.window_v, S + B, W, h);
      }
      const void* dst = part == 0 ? c->layer_k(layer) : c->layer_v(layer);
      SQZ_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(const_cast<void*>(dst), stage.data(), stage.size(),
                                               cudaMemcpyHostToDevice, stream),
                               "DeviceContext: K/V upload");
      // The staging buffer is reused for the next layer.
      SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "DeviceContext: K/V upload");
    }
  }
  // The index, all heads at once.
  const int64_t heads = shape.heads(), k = shape.k, k1 = shape.k1;
  std::vector<__nv_bfloat16> cent(heads * k * d), coarse(heads * k1 * d);
  std::vector<int32_t> counts(heads * k), offsets(heads * (k + 1)), coarse_off(heads * (k1 + 1)),
      members(k1 > 0 ? heads * k : 0);
  for (int64_t i = 0; i < heads; ++i) {
    const HeadIndex& x = snapshot.heads[i];
    for (int64_t j = 0; j < k * d; ++j) cent[i * k * d + j] = __float2bfloat16(x.centroids[j]);
    std::copy(x.counts.begin(), x.counts.end(), counts.begin() + i * k);
    std::copy(x.offsets.begin(), x.offsets.end(), offsets.begin() + i * (k + 1));
    for (int32_t cnt : x.counts) c->largest_cluster_ = std::max<int64_t>(c->largest_cluster_, cnt);
    if (k1 > 0) {
      for (int64_t j = 0; j < k1 * d; ++j) {
        coarse[i * k1 * d + j] = __float2bfloat16(x.coarse_centroids[j]);
      }
      std::copy(x.coarse_offsets.begin(), x.coarse_offsets.end(),
                coarse_off.begin() + i * (k1 + 1));
      std::copy(x.coarse_members.begin(), x.coarse_members.end(), members.begin() + i * k);
    }
  }
  auto copy = [&](void* dst, const void* src, size_t bytes) -> Status {
    if (bytes == 0) return OkStatus();
    SQZ_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream),
                             "DeviceContext: index upload");
    return OkStatus();
  };
  SQZ_RETURN_IF_ERROR(copy(c->centroids(), cent.data(), cent.size() * 2));
  SQZ_RETURN_IF_ERROR(copy(c->counts(), counts.data(), counts.size() * 4));
  SQZ_RETURN_IF_ERROR(copy(c->offsets(), offsets.data(), offsets.size() * 4));
  if (k1 > 0) {
    SQZ_RETURN_IF_ERROR(copy(c->coarse_centroids(), coarse.data(), coarse.size() * 2));
    SQZ_RETURN_IF_ERROR(copy(c->coarse_offsets(), coarse_off.data(), coarse_off.size() * 4));
    SQZ_RETURN_IF_ERROR(copy(c->coarse_members(), members.data(), members.size() * 4));
  }
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "DeviceContext: index upload");
  return c;
}

uint64_t SnapshotFingerprint(const ContextSnapshot& snapshot) {
  const SnapshotDims& d = snapshot.dims;
  uint64_t h = 1469598103934665603ull;
  for (int64_t x : {int64_t{d.layers}, int64_t{d.kv_heads}, int64_t{d.q_heads}, int64_t{d.head_dim},
                    d.n_tokens, d.sink_len, d.window_len, d.body_len}) {
    Mix(&h, static_cast<uint64_t>(x));
  }
  Mix(&h, snapshot.options.kmeans_seed);
  if (!snapshot.heads.empty()) {
    for (const HeadIndex* x : {&snapshot.heads.front(), &snapshot.heads.back()}) {
      MixFloats(&h, x->sink_k, 64);
      MixFloats(&h, x->body_k, 64);
      MixFloats(&h, x->window_v, 64);
      MixFloats(&h, x->centroids, 64);
    }
  }
  MixFloats(&h, snapshot.thresholds_global, 64);
  return h;
}

Status DeviceContextCache::MakeRoom(const ContextSnapshot* key, int64_t bytes) {
  const std::string what = "the fixed context (" + std::to_string(key->dims.n_tokens) + " tokens)";
  SQZ_ASSIGN_OR_RETURN(std::vector<ContextResidency::Key> evict,
                       residency_.PlanAdmission(key, bytes, what));
  for (ContextResidency::Key k : evict) {
    residency_.Erase(k);
    entries_.erase(static_cast<const ContextSnapshot*>(k));
  }
  return OkStatus();
}

StatusOr<const DeviceContext*> DeviceContextCache::Get(const ContextSnapshot& snapshot,
                                                       cudaStream_t stream) {
  const uint64_t fp = SnapshotFingerprint(snapshot);
  auto it = entries_.find(&snapshot);
  if (it != entries_.end()) {
    if (it->second.fingerprint == fp) {
      residency_.Touch(&snapshot);
      ++hits_;
      return it->second.context.get();
    }
    // Another snapshot at a freed one's address: the old copy is stale.
    if (residency_.refs(&snapshot) > 0) {
      return FailedPreconditionError(
          "a context snapshot at the address of one still used by running sequences: the "
          "engine must keep a snapshot alive while sequences over it run");
    }
    residency_.Erase(&snapshot);
    entries_.erase(it);
  }
  SQZ_ASSIGN_OR_RETURN(DeviceContextShape shape, ShapeOf(snapshot, kv_elem_bytes_));
  SQZ_RETURN_IF_ERROR(MakeRoom(&snapshot, shape.Bytes()));
  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<DeviceContext> c,
                       DeviceContext::Upload(snapshot, kv_elem_bytes_, stream));
  residency_.Insert(&snapshot, shape.Bytes());
  ++uploads_;
  const DeviceContext* out = c.get();
  entries_[&snapshot] = Entry{fp, std::move(c)};
  return out;
}

Status DeviceContextCache::Install(const ContextSnapshot& snapshot,
                                   std::unique_ptr<DeviceContext> context, cudaStream_t stream) {
  if (entries_.count(&snapshot)) {
    return InvalidArgumentError("DeviceContextCache::Install: the snapshot is already resident");
  }
  const SnapshotDims& d = snapshot.dims;
  const DeviceContextShape& s = context->shape();
  if (s.layers != d.layers || s.kv_heads != d.kv_heads || s.head_dim != d.head_dim ||
      s.n_tokens != d.n_tokens || s.sink_len != d.sink_len || s.window_len != d.window_len ||
      s.kv_elem_bytes != kv_elem_bytes_) {
    return InvalidArgumentError(
        "DeviceContextCache::Install: the device context's shape does not match the snapshot's "
        "dims (or the backend's element type)");
  }
  SQZ_RETURN_IF_ERROR(context->ReadBounds(stream));
  SQZ_RETURN_IF_ERROR(MakeRoom(&snapshot, s.Bytes()));
  residency_.Insert(&snapshot, s.Bytes());
  entries_[&snapshot] = Entry{SnapshotFingerprint(snapshot), std::move(context)};
  return OkStatus();
}

Status DeviceContextCache::Evict(const ContextSnapshot* snapshot) {
  if (!entries_.count(snapshot)) return NotFoundError("Evict: the context is not resident");
  if (residency_.refs(snapshot) > 0) {
    return FailedPreconditionError("Evict: " + std::to_string(residency_.refs(snapshot)) +
                                   " sequences still use the context");
  }
  residency_.Erase(snapshot);
  entries_.erase(snapshot);
  return OkStatus();
}

DeviceContextCache::Stats DeviceContextCache::stats() const {
  Stats s;
  s.resident = residency_.size();
  s.used_bytes = residency_.used_bytes();
  s.budget_bytes = residency_.budget_bytes();
  s.uploads = uploads_;
  s.hits = hits_;
  s.evictions = residency_.evictions();
  return s;
}

}  // namespace sqz
