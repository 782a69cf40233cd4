#include "kernels/cuda/squeeze_ingest.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kmeans_internal.cuh"

namespace sqz::cuda {
namespace {

using internal::GridFor;
using bf16 = __nv_bfloat16;

constexpr char kOp[] = "IngestContext";
constexpr int kThreads = 256;

// Copies K and V rows into sink | body in cluster order | window, 16 bytes per thread, and writes
// the body positions. order: [heads][B] body row ids (relative to S) in cluster order.
__global__ void RelayoutKernel(const char* keys, const char* values, const int32_t* order,
                               int32_t kv_heads, int64_t n_tokens, int64_t sink, int64_t body,
                               int64_t row_bytes, int64_t total_chunks, char* k_out, char* v_out,
                               int32_t* positions) {
  const int64_t chunks = row_bytes / 16;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < total_chunks;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t chunk = q % chunks;
    const int64_t r = (q / chunks) % n_tokens;
    const int64_t h = q / chunks / n_tokens;
    int64_t src = r;
    if (r >= sink && r < sink + body) {
      src = sink + order[h * body + (r - sink)];
      if (chunk == 0) positions[h * body + (r - sink)] = static_cast<int32_t>(src);
    }
    const int64_t layer = h / kv_heads, kv = h % kv_heads;
    const int64_t in = ((layer * n_tokens + src) * kv_heads + kv) * row_bytes + chunk * 16;
    const int64_t o = (h * n_tokens + r) * row_bytes + chunk * 16;
    *reinterpret_cast<uint4*>(k_out + o) = *reinterpret_cast<const uint4*>(keys + in);
    *reinterpret_cast<uint4*>(v_out + o) = *reinterpret_cast<const uint4*>(values + in);
  }
}

__global__ void CountsToWeightsKernel(const int32_t* counts, int64_t total, float* weights) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    weights[i] = static_cast<float>(counts[i]);
  }
}

__global__ void ToBf16Kernel(const float* x, int64_t total, bf16* out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16_rn(x[i]);
  }
}

// ct[h][e][c] = centroids[h][c][e] (coalesced reads of a centroid column in calibration).
__global__ void TransposeKernel(const float* centroids, int64_t k, int d, int64_t total,
                                float* ct) {
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < total;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = q % k, e = (q / k) % d, h = q / k / d;
    ct[q] = centroids[(h * k + c) * d + e];
  }
}

__device__ __forceinline__ int CalibrationBin(float p) {
  if (!(p >= 0x1.0p-126f)) return 0;
  const int bin = 1 + static_cast<int>((log2f(p) + static_cast<float>(kCalibrationOctaves)) *
                                       static_cast<float>(kCalibrationBinsPerOctave));
  return min(bin, kCalibrationBins - 1);
}

// One block per (head, group of window tokens): Q = tokens * g queries against all k centroids in
// three passes (max, normaliser, probabilities), as the CPU's ClusterProbabilities does per token:
// p[c] = exp(s[c] - m) / sum_c' N[c'] exp(s[c'] - m), s = q . C / sqrt(d), reduced over the group
// (max, or mean), then N[c] is added to the bin of p[c] in a shared-memory histogram that is
// flushed once per block.
constexpr int kCalibMaxQ = 32;
constexpr int kCalibThreads = 256;
constexpr int kCalibWarps = kCalibThreads / 32;

template <int D>
size_t CalibrationSmemBytes() {
  return kCalibMaxQ * D * sizeof(float) + 2 * kCalibrationBins * sizeof(uint32_t);
}

template <int D>
__device__ __forceinline__ void Scores(const float* q_s, const float* ct_h, int64_t k, int64_t c,
                                       float scale, float s[kCalibMaxQ]) {
#pragma unroll
  for (int q = 0; q < kCalibMaxQ; ++q) s[q] = 0.0f;
  for (int e = 0; e < D; ++e) {
    const float x = ct_h[e * k + c];
#pragma unroll
    for (int q = 0; q < kCalibMaxQ; ++q) s[q] += q_s[q * D + e] * x;
  }
#pragma unroll
  for (int q = 0; q < kCalibMaxQ; ++q) s[q] *= scale;
}

template <int D>
__global__ void __launch_bounds__(kCalibThreads)
    CalibrateKernel(const float* window_q, const float* ct, const int32_t* counts, int layers,
                    int kv_heads, int q_heads, int64_t window, int64_t k, int tokens_per_block,
                    uint64_t* hist) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* q_s = reinterpret_cast<float*>(smem_raw);                       // [32][D]
  uint32_t* hist_s = reinterpret_cast<uint32_t*>(q_s + kCalibMaxQ * D);  // [2][bins]
  __shared__ float red_f[kCalibWarps][kCalibMaxQ];
  __shared__ double red_d[kCalibWarps][kCalibMaxQ];
  __shared__ float m_s[kCalibMaxQ];
  __shared__ float inv_s[kCalibMaxQ];
  const int h = blockIdx.y, layer = h / kv_heads, kv = h % kv_heads, g = q_heads / kv_heads;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * tokens_per_block;
  const int nt = static_cast<int>(min(static_cast<int64_t>(tokens_per_block), window - t0));
  const int nq = nt * g;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int i = threadIdx.x; i < kCalibMaxQ * D; i += blockDim.x) {
    const int qi = i / D, e = i % D;
    float v = 0.0f;
    if (qi < nq) {
      const int tt = qi / g, j = qi % g;
      v = window_q[((layer * window + t0 + tt) * q_heads + kv * g + j) * D + e];
    }
    q_s[i] = v;
  }
  for (int i = threadIdx.x; i < 2 * kCalibrationBins; i += blockDim.x) hist_s[i] = 0;
  __syncthreads();
  const float* ct_h = ct + static_cast<int64_t>(h) * D * k;
  const int32_t* cnt = counts + static_cast<int64_t>(h) * k;
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  float s[kCalibMaxQ];

  // Pass 1: max score per query.
  float mx[kCalibMaxQ];
#pragma unroll
  for (int q = 0; q < kCalibMaxQ; ++q) mx[q] = -INFINITY;
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    Scores<D>(q_s, ct_h, k, c, scale, s);
#pragma unroll
    for (int q = 0; q < kCalibMaxQ; ++q) mx[q] = fmaxf(mx[q], s[q]);
  }
#pragma unroll
  for (int q = 0; q < kCalibMaxQ; ++q) {
    const float v = internal::WarpMax(mx[q]);
    if (lane == 0) red_f[warp][q] = v;
  }
  __syncthreads();
  if (threadIdx.x < kCalibMaxQ) {
    float v = -INFINITY;
    for (int w = 0; w < kCalibWarps; ++w) v = fmaxf(v, red_f[w][threadIdx.x]);
    m_s[threadIdx.x] = v;
  }
  __syncthreads();

  // Pass 2: normaliser sum_c N[c] exp(s - m), summed in double across threads.
  float z[kCalibMaxQ];
#pragma unroll
  for (int q = 0; q < kCalibMaxQ; ++q) z[q] = 0.0f;
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    Scores<D>(q_s, ct_h, k, c, scale, s);
    const float n_c = static_cast<float>(cnt[c]);
#pragma unroll
    for (int q = 0; q < kCalibMaxQ; ++q) z[q] += n_c * __expf(s[q] - m_s[q]);
  }
#pragma unroll
  for (int q = 0; q < kCalibMaxQ; ++q) {
    double v = z[q];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) red_d[warp][q] = v;
  }
  __syncthreads();
  if (threadIdx.x < kCalibMaxQ) {
    double v = 0.0;
    for (int w = 0; w < kCalibWarps; ++w) v += red_d[w][threadIdx.x];
    inv_s[threadIdx.x] = v > 0.0 ? static_cast<float>(1.0 / v) : 0.0f;
  }
  __syncthreads();

  // Pass 3: probabilities, reduced over the group, into the histogram.
  const float group_scale = 1.0f / static_cast<float>(g);
  for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
    Scores<D>(q_s, ct_h, k, c, scale, s);
    const uint32_t n_c = static_cast<uint32_t>(cnt[c]);
#pragma unroll
    for (int q = 0; q < kCalibMaxQ; ++q) s[q] = __expf(s[q] - m_s[q]) * inv_s[q];
    for (int tt = 0; tt < nt; ++tt) {
      float pmax = 0.0f, psum = 0.0f;
#pragma unroll
      for (int q = 0; q < kCalibMaxQ; ++q) {
        if (q >= tt * g && q < (tt + 1) * g) {
          pmax = q == tt * g ? s[q] : fmaxf(pmax, s[q]);
          psum += s[q];
        }
      }
      atomicAdd(&hist_s[CalibrationBin(pmax)], n_c);
      atomicAdd(&hist_s[kCalibrationBins + CalibrationBin(psum * group_scale)], n_c);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 2 * kCalibrationBins; i += blockDim.x) {
    if (hist_s[i] == 0) continue;
    const int r = i / kCalibrationBins, bin = i % kCalibrationBins;
    atomicAdd(reinterpret_cast<unsigned long long*>(
                  &hist[(static_cast<int64_t>(r) * layers + layer) * kCalibrationBins + bin]),
              static_cast<unsigned long long>(hist_s[i]));
  }
}

template <int D>
Status LaunchCalibrate(const IngestShape& s, const float* window_q, const float* ct,
                       const int32_t* counts, uint64_t* hist, cudaStream_t stream) {
  const int g = s.q_heads / s.kv_heads;
  const int tokens_per_block = std::max(1, kCalibMaxQ / g);
  const size_t smem = CalibrationSmemBytes<D>();
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(CalibrateKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)),
      kOp);
  const dim3 grid(static_cast<unsigned>((s.window_len + tokens_per_block - 1) / tokens_per_block),
                  static_cast<unsigned>(s.layers * s.kv_heads));
  CalibrateKernel<D><<<grid, kCalibThreads, smem, stream>>>(window_q, ct, counts, s.layers,
                                                            s.kv_heads, s.q_heads, s.window_len,
                                                            s.k, tokens_per_block, hist);
  return LaunchStatus(kOp);
}

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

int64_t BodyLen(const IngestShape& s) { return s.n_tokens - s.sink_len - s.window_len; }
int Heads(const IngestShape& s) { return s.layers * s.kv_heads; }

KMeansShape FineShape(const IngestShape& s) { return {Heads(s), BodyLen(s), s.k, s.head_dim}; }
KMeansShape CoarseShape(const IngestShape& s) { return {Heads(s), s.k, s.k1, s.head_dim}; }

struct Layout {
  size_t fine_ws, fine_ws_bytes, assign, coarse_ws, coarse_ws_bytes, coarse_assign, coarse_counts,
      weights, ct, total;
};

StatusOr<Layout> MakeLayout(const IngestShape& s) {
  if (s.layers < 1 || s.kv_heads < 1 || s.q_heads < s.kv_heads || s.q_heads % s.kv_heads != 0) {
    return ArgError(kOp, "needs layers, kv_heads >= 1 and q_heads a multiple of kv_heads");
  }
  if (s.q_heads / s.kv_heads > kCalibrationMaxGroup) {
    return UnsupportedError(kOp, "GQA groups of more than 32 query heads are not compiled");
  }
  if (s.head_dim != 64 && s.head_dim != 128) {
    return UnsupportedError(
        kOp, "head_dim " + std::to_string(s.head_dim) + " is not compiled (64, 128)");
  }
  if (s.n_tokens < 1 || s.sink_len < 0 || s.window_len < 0 || BodyLen(s) < 0) {
    return ArgError(kOp, "needs n_tokens >= 1 and 0 <= sink_len + window_len <= n_tokens");
  }
  const int64_t body = BodyLen(s);
  if ((body == 0) != (s.k == 0) || s.k < 0 || s.k > body) {
    return ArgError(kOp, "k must be in [1, body_len] (0 for an empty body), got k=" +
                             std::to_string(s.k) + " body_len=" + std::to_string(body));
  }
  if (s.k1 != 0 && (s.k1 < 2 || s.k1 >= s.k)) {
    return ArgError(kOp, "k1 must be 0 or in [2, k), got k1=" + std::to_string(s.k1));
  }
  const size_t heads = static_cast<size_t>(Heads(s));
  Layout l{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += AlignUp(bytes);
    return here;
  };
  if (body > 0) {
    SQZ_ASSIGN_OR_RETURN(l.fine_ws_bytes, KMeansWorkspaceBytes(FineShape(s)));
    l.fine_ws = take(l.fine_ws_bytes);
    l.assign = take(heads * body * 2 * sizeof(int32_t));  // assignment + order
    l.ct = take(heads * s.k * s.head_dim * sizeof(float));
  }
  if (s.k1 > 0) {
    SQZ_ASSIGN_OR_RETURN(l.coarse_ws_bytes, KMeansWorkspaceBytes(CoarseShape(s)));
    l.coarse_ws = take(l.coarse_ws_bytes);
    l.coarse_assign = take(heads * s.k * sizeof(int32_t));
    l.coarse_counts = take(heads * s.k1 * sizeof(int32_t));
    l.weights = take(heads * s.k * sizeof(float));
  }
  l.total = std::max<size_t>(at, kAlign);
  return l;
}

}  // namespace

StatusOr<size_t> IngestWorkspaceBytes(const IngestShape& shape) {
  SQZ_ASSIGN_OR_RETURN(Layout l, MakeLayout(shape));
  return l.total;
}

Status IngestContext(const IngestShape& s, const KMeansParams& params, const void* keys,
                     const void* values, PointType type, const float* window_q,
                     const IngestOutputs& out, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream, IngestTimings* timings) {
  SQZ_ASSIGN_OR_RETURN(Layout l, MakeLayout(s));
  const int64_t body = BodyLen(s);
  const int heads = Heads(s);
  if (keys == nullptr || values == nullptr) return ArgError(kOp, "null keys or values");
  if (s.window_len > 0 && window_q == nullptr) return ArgError(kOp, "null window queries");
  if (type != PointType::kF32 && type != PointType::kBf16) return ArgError(kOp, "unknown type");
  if (!out.k_out || !out.v_out || !out.histogram) {
    return ArgError(kOp, "null output (k_out, v_out and histogram are needed)");
  }
  if (body > 0 && (!out.positions || !out.centroids || !out.counts || !out.offsets)) {
    return ArgError(kOp, "null output (positions, centroids, counts, offsets)");
  }
  if (s.k1 > 0 && (!out.coarse_centroids || !out.coarse_offsets || !out.coarse_members)) {
    return ArgError(kOp, "null coarse output");
  }
  if (workspace == nullptr || workspace_bytes < l.total ||
      reinterpret_cast<uintptr_t>(workspace) % kAlign != 0) {
    return ArgError(
        kOp, "workspace must be 256-byte aligned and hold " + std::to_string(l.total) + " bytes");
  }
  char* ws = static_cast<char*>(workspace);
  const int d = s.head_dim;
  const size_t elem = type == PointType::kBf16 ? sizeof(bf16) : sizeof(float);
  internal::StageEvents<5> clock(timings != nullptr, stream);
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaMemsetAsync(out.histogram, 0, 2 * sizeof(uint64_t) * s.layers * kCalibrationBins, stream),
      kOp);
  clock.Mark(0);
  int32_t* assign = reinterpret_cast<int32_t*>(ws + l.assign);
  int32_t* order = assign + static_cast<size_t>(heads) * body;
  if (body > 0) {
    PointsView view;
    view.data = keys;
    view.type = type;
    view.heads_inner = s.kv_heads;
    view.outer_stride = s.n_tokens * s.kv_heads * d;
    view.inner_stride = d;
    view.row_stride = static_cast<int64_t>(s.kv_heads) * d;
    view.row0 = s.sink_len;
    KMeansOutputs ko;
    ko.assignment = assign;
    ko.order = order;
    ko.offsets = out.offsets;
    ko.counts = out.counts;
    ko.centroids = out.centroids;
    ko.iterations = out.iterations;
    KMeansStats stats;
    SQZ_RETURN_IF_ERROR(BatchedSphericalKMeans(FineShape(s), params, view, nullptr, ko,
                                               ws + l.fine_ws, l.fine_ws_bytes, stream,
                                               timings != nullptr ? &stats : nullptr));
    if (timings != nullptr) timings->fine = stats;
  }
  clock.Mark(1);
  const int64_t row_bytes = d * static_cast<int64_t>(elem);
  const int64_t chunks = static_cast<int64_t>(heads) * s.n_tokens * (row_bytes / 16);
  RelayoutKernel<<<GridFor(chunks, kThreads), kThreads, 0, stream>>>(
      static_cast<const char*>(keys), static_cast<const char*>(values), order, s.kv_heads,
      s.n_tokens, s.sink_len, body, row_bytes, chunks, static_cast<char*>(out.k_out),
      static_cast<char*>(out.v_out), out.positions);
  SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
  clock.Mark(2);
  if (s.k1 > 0) {
    float* weights = reinterpret_cast<float*>(ws + l.weights);
    const int64_t fine = static_cast<int64_t>(heads) * s.k;
    CountsToWeightsKernel<<<GridFor(fine, kThreads), kThreads, 0, stream>>>(out.counts, fine,
                                                                            weights);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
    PointsView view;
    view.data = out.centroids;
    view.type = PointType::kF32;
    view.heads_inner = 1;
    view.outer_stride = s.k * d;
    view.row_stride = d;
    KMeansOutputs ko;
    ko.assignment = reinterpret_cast<int32_t*>(ws + l.coarse_assign);
    ko.order = out.coarse_members;
    ko.offsets = out.coarse_offsets;
    ko.counts = reinterpret_cast<int32_t*>(ws + l.coarse_counts);
    ko.centroids = out.coarse_centroids;
    SQZ_RETURN_IF_ERROR(BatchedSphericalKMeans(CoarseShape(s), params, view, weights, ko,
                                               ws + l.coarse_ws, l.coarse_ws_bytes, stream));
  }
  if (body > 0 && out.centroids_bf16 != nullptr) {
    const int64_t total = static_cast<int64_t>(heads) * s.k * d;
    ToBf16Kernel<<<GridFor(total, kThreads), kThreads, 0, stream>>>(out.centroids, total,
                                                                    out.centroids_bf16);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
  }
  if (s.k1 > 0 && out.coarse_centroids_bf16 != nullptr) {
    const int64_t total = static_cast<int64_t>(heads) * s.k1 * d;
    ToBf16Kernel<<<GridFor(total, kThreads), kThreads, 0, stream>>>(out.coarse_centroids, total,
                                                                    out.coarse_centroids_bf16);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
  }
  clock.Mark(3);
  if (body > 0 && s.window_len > 0) {
    float* ct = reinterpret_cast<float*>(ws + l.ct);
    const int64_t total = static_cast<int64_t>(heads) * s.k * d;
    TransposeKernel<<<GridFor(total, kThreads), kThreads, 0, stream>>>(out.centroids, s.k, d, total,
                                                                       ct);
    SQZ_RETURN_IF_ERROR(LaunchStatus(kOp));
    if (d == 128) {
      SQZ_RETURN_IF_ERROR(LaunchCalibrate<128>(s, window_q, ct, out.counts, out.histogram, stream));
    } else {
      SQZ_RETURN_IF_ERROR(LaunchCalibrate<64>(s, window_q, ct, out.counts, out.histogram, stream));
    }
  }
  clock.Mark(4);
  if (timings != nullptr) {
    SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), kOp);
    timings->normalize_seed_cluster_ms = clock.Ms(0, 1);
    timings->relayout_ms = clock.Ms(1, 2);
    timings->coarse_ms = clock.Ms(2, 3);
    timings->calibrate_ms = clock.Ms(3, 4);
    timings->total_ms = clock.Ms(0, 4);
  }
  return OkStatus();
}

}  // namespace sqz::cuda
