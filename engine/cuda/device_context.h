// DeviceContext: the GPU copy of one registered fixed context (a ContextSnapshot), in exactly the
// layout the query-time kernels read (kernels/cuda/squeeze_select.h SqueezeLayerView and
// decode_attention.h), for all layers:
//   K, V              [layers][kv_heads][n_tokens][head_dim] of the backend's element type (bf16,
//   or
//                     fp32 in the exactness mode), rows sink | body in cluster order | window;
//   centroids         [layers][kv_heads][k][head_dim] bf16 (read once per lookup; 2.5% of a dense
//                     KV read at 5% centroids);
//   counts            [layers][kv_heads][k] int32;   offsets [layers][kv_heads][k + 1] int32 (CSR);
//   coarse level      (k1 > 0 only) coarse centroids [layers][kv_heads][k1][head_dim] bf16, coarse
//                     offsets [layers][kv_heads][k1 + 1], coarse members [layers][kv_heads][k].
// This is also the layout IngestContext (kernels/cuda/squeeze_ingest.h) writes, so a context
// ingested on the device can be installed without a round trip through the host (bench/cuda_e2e).
//
// DeviceContextCache keeps these copies for the CUDA backend: keyed by the snapshot's identity
// (its address, plus a fingerprint of its shape and a sample of its values that catches a freed
// snapshot's address reused by another), shared by every sequence over that context (reference
// counted: one reference per live sequence bound to it), uploaded once, evicted least recently used
// among unreferenced copies when a new one needs room within the budget (ContextResidency).
//
// Ownership: a DeviceContext owns its device memory; the cache owns its DeviceContexts.
// Thread safety: not thread-safe; the backend's thread uses them. Upload and Get synchronise the
// given stream (they run before a step, never inside one).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "engine/cuda/context_residency.h"
#include "engine/cuda/device_memory.h"
#include "engine/squeeze/snapshot.h"
#include "kernels/cuda/squeeze_select.h"

namespace sqz {

// Sizes of a device copy. kv_elem_bytes: 2 (bf16) or 4 (fp32).
struct DeviceContextShape {
  int32_t layers = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int64_t n_tokens = 0;
  int64_t sink_len = 0;
  int64_t window_len = 0;
  int64_t k = 0;   // fine clusters per (layer, kv head), >= 1
  int64_t k1 = 0;  // coarse clusters (0: none)
  int kv_elem_bytes = 2;

  int64_t heads() const { return int64_t{layers} * kv_heads; }
  int64_t body_len() const { return n_tokens - sink_len - window_len; }
  // Device bytes of the K/V rows and of the index (each part 256-byte aligned).
  int64_t KvBytes() const;
  int64_t IndexBytes() const;
  int64_t Bytes() const { return KvBytes() + IndexBytes(); }
};

// The shape of a snapshot's device copy. INVALID_ARGUMENT when heads differ in cluster counts.
StatusOr<DeviceContextShape> ShapeOf(const ContextSnapshot& snapshot, int kv_elem_bytes);

class DeviceContext {
 public:
  // Device memory for `shape`, uninitialised (RESOURCE_EXHAUSTED when the device has no room).
  static StatusOr<std::unique_ptr<DeviceContext>> Allocate(const DeviceContextShape& shape);
  // Allocate + copy of `snapshot` (converted to the element type, rows re-laid head-major);
  // synchronises `stream`.
  static StatusOr<std::unique_ptr<DeviceContext>> Upload(const ContextSnapshot& snapshot,
                                                         int kv_elem_bytes, cudaStream_t stream);

  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  const DeviceContextShape& shape() const { return shape_; }
  // Base pointers of the arrays above (all layers), for filling them on the device.
  void* k() const { return kv_.get<char>(); }
  void* v() const { return kv_.get<char>() + KvHalf(); }
  __nv_bfloat16* centroids() const;
  int32_t* counts() const;
  int32_t* offsets() const;
  __nv_bfloat16* coarse_centroids() const;  // null when k1 == 0
  int32_t* coarse_offsets() const;
  int32_t* coarse_members() const;

  // K / V rows of `layer`: [kv_heads][n_tokens][head_dim].
  const void* layer_k(int layer) const;
  const void* layer_v(int layer) const;
  // The lookup's view of `layer` (device pointers).
  cuda::SqueezeLayerView view(int layer) const;
  // Largest cluster over all heads (bounds the selected keys, SqueezeMaxSelectedKeys); set by
  // Upload, or by ReadBounds after the index was written on the device.
  int64_t largest_cluster() const { return largest_cluster_; }
  Status ReadBounds(cudaStream_t stream);

 private:
  explicit DeviceContext(const DeviceContextShape& shape) : shape_(shape) {}
  size_t KvHalf() const { return static_cast<size_t>(shape_.KvBytes() / 2); }
  char* IndexPart(int part) const;

  DeviceContextShape shape_;
  DeviceMemory kv_;     // K then V
  DeviceMemory index_;  // centroids, counts, offsets, coarse level
  int64_t largest_cluster_ = 0;
};

class DeviceContextCache {
 public:
  // budget_bytes: device bytes all resident contexts may hold; kv_elem_bytes 2 or 4.
  DeviceContextCache(int64_t budget_bytes, int kv_elem_bytes)
      : residency_(budget_bytes), kv_elem_bytes_(kv_elem_bytes) {}

  DeviceContextCache(const DeviceContextCache&) = delete;
  DeviceContextCache& operator=(const DeviceContextCache&) = delete;

  // The resident copy of `snapshot`, uploading it (after evicting unused copies, least recently
  // used first) when absent; marks it most recently used. RESOURCE_EXHAUSTED (message from
  // ContextResidency) when it cannot fit, INVALID_ARGUMENT for an inconsistent snapshot.
  StatusOr<const DeviceContext*> Get(const ContextSnapshot& snapshot, cudaStream_t stream);
  // Makes `context` (filled on the device, e.g. by IngestContext) the resident copy of `snapshot`
  // (whose dims must match), evicting as Get does. INVALID_ARGUMENT if `snapshot` is resident.
  Status Install(const ContextSnapshot& snapshot, std::unique_ptr<DeviceContext> context,
                 cudaStream_t stream);
  // Reference counting by live sequences (the snapshot must be resident: Get first).
  void Acquire(const ContextSnapshot* snapshot) { residency_.Acquire(snapshot); }
  void Release(const ContextSnapshot* snapshot) { residency_.Release(snapshot); }
  // Drops an unreferenced copy; FAILED_PRECONDITION while sequences use it, NOT_FOUND if absent.
  Status Evict(const ContextSnapshot* snapshot);

  struct Stats {
    int64_t resident = 0;
    int64_t used_bytes = 0;
    int64_t budget_bytes = 0;
    int64_t uploads = 0;
    int64_t hits = 0;
    int64_t evictions = 0;
  };
  Stats stats() const;

 private:
  struct Entry {
    uint64_t fingerprint = 0;
    std::unique_ptr<DeviceContext> context;
  };
  Status MakeRoom(const ContextSnapshot* key, int64_t bytes);

  ContextResidency residency_;
  const int kv_elem_bytes_;
  std::unordered_map<const ContextSnapshot*, Entry> entries_;
  int64_t uploads_ = 0, hits_ = 0;
};

// A fingerprint of the snapshot's shape, options and a sample of its values: different for the
// snapshots a reused address could hold in practice (not a cryptographic digest). Host only.
uint64_t SnapshotFingerprint(const ContextSnapshot& snapshot);

}  // namespace sqz
