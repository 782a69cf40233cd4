#include "engine/squeeze_gpu/gpu_index_builder.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <utility>

#include "kernels/cuda/cuda_status.h"

namespace sqz {
namespace {

constexpr char kOp[] = "BuildSnapshotOnDevice";
constexpr float kKeepAll = -1.0f;

struct CudaFree {
  void operator()(void* p) const { cudaFree(p); }
};
using DevicePtr = std::unique_ptr<void, CudaFree>;

// Owns every device buffer of one build; freed together when the build returns.
class DeviceArena {
 public:
  template <typename T>
  StatusOr<T*> Alloc(size_t count) {
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(count * sizeof(T), 256);
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return ResourceExhaustedError(std::string(kOp) + ": out of device memory for " +
                                    std::to_string(bytes) + " bytes");
    }
    SQZ_RETURN_IF_ERROR(cuda::CudaStatus(err, kOp));
    buffers_.emplace_back(p);
    return static_cast<T*>(p);
  }

 private:
  std::vector<DevicePtr> buffers_;
};

template <typename T>
Status Upload(const std::vector<T>& host, T* device) {
  if (host.empty()) return OkStatus();
  return cuda::CudaStatus(
      cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), kOp);
}

template <typename T>
Status Download(const T* device, size_t count, std::vector<T>* host) {
  host->resize(count);
  if (count == 0) return OkStatus();
  return cuda::CudaStatus(
      cudaMemcpy(host->data(), device, count * sizeof(T), cudaMemcpyDeviceToHost), kOp);
}

// Calibrate's quantile rule over one histogram (weights per bin): the upper edge of the bin whose
// cumulative weight is closest to sparsity * total.
float Threshold(const uint64_t* w, double sparsity) {
  double total = 0.0;
  for (int i = 0; i < cuda::kCalibrationBins; ++i) total += static_cast<double>(w[i]);
  if (total <= 0.0) return kKeepAll;
  const double target = sparsity * total;
  float best_t = kKeepAll;
  double best_err = target, dropped = 0.0;
  for (int i = 0; i + 1 < cuda::kCalibrationBins; ++i) {
    dropped += static_cast<double>(w[i]);
    const double err = std::abs(dropped - target);
    if (w[i] > 0 && err < best_err) {
      best_err = err;
      best_t = std::exp2(static_cast<float>(i) / cuda::kCalibrationBinsPerOctave -
                         cuda::kCalibrationOctaves);
    }
  }
  return best_t;
}

}  // namespace

void ThresholdsFromHistograms(const std::vector<uint64_t>& hist, int64_t window_len,
                              ContextSnapshot* s) {
  const int layers = s->dims.layers;
  constexpr int kBins = cuda::kCalibrationBins;
  s->thresholds_global.assign(kNumGqaReduce * kNumSparsities, kKeepAll);
  s->thresholds_layer.assign(static_cast<size_t>(kNumGqaReduce) * layers * kNumSparsities,
                             kKeepAll);
  if (window_len == 0) return;
  SQZ_CHECK_EQ(hist.size(), static_cast<size_t>(kNumGqaReduce) * layers * kBins);
  std::vector<uint64_t> global(kBins);
  for (int r = 0; r < kNumGqaReduce; ++r) {
    std::fill(global.begin(), global.end(), 0);
    for (int l = 0; l < layers; ++l) {
      const uint64_t* w = hist.data() + (static_cast<size_t>(r) * layers + l) * kBins;
      for (int b = 0; b < kBins; ++b) global[b] += w[b];
      for (int i = 0; i < kNumSparsities; ++i) {
        s->thresholds_layer[(static_cast<size_t>(r) * layers + l) * kNumSparsities + i] =
            Threshold(w, SparsityAt(i));
      }
    }
    for (int i = 0; i < kNumSparsities; ++i) {
      s->thresholds_global[r * kNumSparsities + i] = Threshold(global.data(), SparsityAt(i));
    }
  }
}

StatusOr<ContextSnapshot> BuildSnapshotOnDevice(const CapturedContext& c,
                                                const SqueezeOptions& options,
                                                GpuIngestReport* report) {
  SQZ_RETURN_IF_ERROR(options.Validate());
  const int64_t n = c.n_tokens;
  const int64_t sink = SinkLength(std::max<int64_t>(n, 0), options);
  const int64_t window = WindowLength(std::max<int64_t>(n, 0), options);
  SQZ_RETURN_IF_ERROR(ValidateCaptured(c, options));
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1) {
    cudaGetLastError();
    return FailedPreconditionError(std::string(kOp) + ": no usable CUDA device");
  }
  const int64_t body = n - sink - window;
  cuda::IngestShape shape;
  shape.layers = c.layers;
  shape.kv_heads = c.kv_heads;
  shape.q_heads = c.q_heads;
  shape.head_dim = c.head_dim;
  shape.n_tokens = n;
  shape.sink_len = sink;
  shape.window_len = window;
  shape.k = FineClusters(body, options);
  shape.k1 = CoarseClusters(body, options);
  SQZ_ASSIGN_OR_RETURN(size_t ws_bytes, cuda::IngestWorkspaceBytes(shape));
  cuda::KMeansParams params;
  params.max_iterations = options.kmeans_iterations;
  params.tolerance = options.kmeans_tolerance;
  params.seed = options.kmeans_seed;

  const int heads = c.layers * c.kv_heads;
  const int64_t d = c.head_dim, k = shape.k, k1 = shape.k1;
  DeviceArena arena;
  SQZ_ASSIGN_OR_RETURN(float* keys, arena.Alloc<float>(c.k.size()));
  SQZ_ASSIGN_OR_RETURN(float* values, arena.Alloc<float>(c.v.size()));
  SQZ_ASSIGN_OR_RETURN(float* window_q, arena.Alloc<float>(c.window_q.size()));
  SQZ_RETURN_IF_ERROR(Upload(c.k, keys));
  SQZ_RETURN_IF_ERROR(Upload(c.v, values));
  SQZ_RETURN_IF_ERROR(Upload(c.window_q, window_q));
  cuda::IngestOutputs out;
  SQZ_ASSIGN_OR_RETURN(float* k_out, arena.Alloc<float>(c.k.size()));
  SQZ_ASSIGN_OR_RETURN(float* v_out, arena.Alloc<float>(c.v.size()));
  out.k_out = k_out;
  out.v_out = v_out;
  SQZ_ASSIGN_OR_RETURN(out.positions, arena.Alloc<int32_t>(heads * body));
  SQZ_ASSIGN_OR_RETURN(out.centroids, arena.Alloc<float>(heads * k * d));
  SQZ_ASSIGN_OR_RETURN(out.counts, arena.Alloc<int32_t>(heads * k));
  SQZ_ASSIGN_OR_RETURN(out.offsets, arena.Alloc<int32_t>(heads * (k + 1)));
  SQZ_ASSIGN_OR_RETURN(out.coarse_centroids, arena.Alloc<float>(heads * k1 * d));
  SQZ_ASSIGN_OR_RETURN(out.coarse_offsets, arena.Alloc<int32_t>(heads * (k1 + 1)));
  SQZ_ASSIGN_OR_RETURN(out.coarse_members, arena.Alloc<int32_t>(heads * k));
  const size_t hist_size = static_cast<size_t>(kNumGqaReduce) * c.layers * cuda::kCalibrationBins;
  SQZ_ASSIGN_OR_RETURN(out.histogram, arena.Alloc<uint64_t>(hist_size));
  SQZ_ASSIGN_OR_RETURN(out.iterations, arena.Alloc<int32_t>(heads));
  SQZ_ASSIGN_OR_RETURN(char* workspace, arena.Alloc<char>(ws_bytes));

  cuda::IngestTimings timings;
  SQZ_RETURN_IF_ERROR(cuda::IngestContext(shape, params, keys, values, cuda::PointType::kF32,
                                          window_q, out, workspace, ws_bytes, nullptr,
                                          report != nullptr ? &timings : nullptr));
  SQZ_RETURN_IF_ERROR(cuda::CudaStatus(cudaDeviceSynchronize(), kOp));

  std::vector<float> k_rows, v_rows, centroids, coarse_centroids;
  std::vector<int32_t> positions, counts, offsets, coarse_offsets, coarse_members, iterations;
  std::vector<uint64_t> hist;
  SQZ_RETURN_IF_ERROR(Download(k_out, c.k.size(), &k_rows));
  SQZ_RETURN_IF_ERROR(Download(v_out, c.v.size(), &v_rows));
  SQZ_RETURN_IF_ERROR(Download(out.positions, heads * body, &positions));
  SQZ_RETURN_IF_ERROR(Download(out.centroids, heads * k * d, &centroids));
  SQZ_RETURN_IF_ERROR(Download(out.counts, heads * k, &counts));
  SQZ_RETURN_IF_ERROR(Download(out.offsets, body > 0 ? heads * (k + 1) : 0, &offsets));
  SQZ_RETURN_IF_ERROR(Download(out.coarse_centroids, heads * k1 * d, &coarse_centroids));
  SQZ_RETURN_IF_ERROR(Download(out.coarse_offsets, k1 > 0 ? heads * (k1 + 1) : 0, &coarse_offsets));
  SQZ_RETURN_IF_ERROR(Download(out.coarse_members, k1 > 0 ? heads * k : 0, &coarse_members));
  SQZ_RETURN_IF_ERROR(Download(out.histogram, hist_size, &hist));
  SQZ_RETURN_IF_ERROR(Download(out.iterations, body > 0 ? heads : 0, &iterations));

  ContextSnapshot s;
  s.options = options;
  s.dims = {.layers = c.layers,
            .kv_heads = c.kv_heads,
            .q_heads = c.q_heads,
            .head_dim = c.head_dim,
            .n_tokens = n,
            .sink_len = sink,
            .window_len = window,
            .body_len = body};
  s.heads.resize(heads);
  auto rows = [&](const std::vector<float>& src, int h, int64_t begin, int64_t count) {
    const float* p = src.data() + (static_cast<int64_t>(h) * n + begin) * d;
    return std::vector<float>(p, p + count * d);
  };
  for (int h = 0; h < heads; ++h) {
    HeadIndex& x = s.heads[h];
    x.sink_k = rows(k_rows, h, 0, sink);
    x.sink_v = rows(v_rows, h, 0, sink);
    x.body_k = rows(k_rows, h, sink, body);
    x.body_v = rows(v_rows, h, sink, body);
    x.window_k = rows(k_rows, h, sink + body, window);
    x.window_v = rows(v_rows, h, sink + body, window);
    x.offsets.assign(1, 0);
    if (body == 0) continue;
    x.body_positions.assign(positions.begin() + h * body, positions.begin() + (h + 1) * body);
    x.centroids.assign(centroids.begin() + h * k * d, centroids.begin() + (h + 1) * k * d);
    x.counts.assign(counts.begin() + h * k, counts.begin() + (h + 1) * k);
    x.offsets.assign(offsets.begin() + h * (k + 1), offsets.begin() + (h + 1) * (k + 1));
    if (k1 == 0) continue;
    x.coarse_centroids.assign(coarse_centroids.begin() + h * k1 * d,
                              coarse_centroids.begin() + (h + 1) * k1 * d);
    x.coarse_offsets.assign(coarse_offsets.begin() + h * (k1 + 1),
                            coarse_offsets.begin() + (h + 1) * (k1 + 1));
    x.coarse_members.assign(coarse_members.begin() + h * k, coarse_members.begin() + (h + 1) * k);
  }
  ThresholdsFromHistograms(hist, window, &s);
  if (report != nullptr) {
    report->timings = timings;
    report->iterations = std::move(iterations);
  }
  return s;
}

}  // namespace sqz
