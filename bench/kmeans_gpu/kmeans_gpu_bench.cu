// sqz_kmeans_gpu_bench: times the GPU ingestion of a fixed context (kernels/cuda/squeeze_ingest.h)
// for an 8B-shaped model (default: 32 layers x 8 KV heads, 32 query heads, d = 128, 128K tokens,
// 5% fine and 1% coarse centroids, at most 20 Lloyd iterations) on random clustered keys generated
// on the device, per stage and in total, next to the cuBLASLt bf16 GEMM rate measured in the same
// run (the ceiling of the assignment GEMM). Checks the outputs' invariants before printing.
//
// Usage: sqz_kmeans_gpu_bench [--layers L] [--kv-heads H] [--q-heads Q] [--head-dim D]
//          [--tokens N] [--iterations I] [--tolerance T] [--reps R] [--f32]
//        sqz_kmeans_gpu_bench --cpu-head [--tokens N] [--head-dim D] [--iterations I]
//          (the CPU reference on one head of the same shape; needs no GPU)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/common/cuda_bench_util.h"
#include "engine/squeeze/kmeans.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/philox.h"
#include "kernels/cuda/squeeze_ingest.h"

namespace {

using sqz::bench::DeviceMem;

using bf16 = __nv_bfloat16;

struct Args {
  int layers = 32, kv_heads = 8, q_heads = 32, head_dim = 128;
  int64_t tokens = 131072;
  int iterations = 20, reps = 2;
  double tolerance = 1e-3;  // early stop (0: always run `iterations`)
  bool f32 = false, cpu_head = false;
  int components = 1024;  // mixture components per head
};

// A standard normal from draw `counter` of stream (a, b, tag).
__device__ float Gauss(uint32_t counter, uint32_t a, uint32_t b, uint32_t tag) {
  const sqz::cuda::Philox4 r = sqz::cuda::Philox4x32(counter, a, b, tag, 0x5eedu, 0x6b6du);
  const float u1 = (static_cast<float>(r.v[0] >> 8) + 1.0f) * 0x1.0p-24f;
  const float u2 = static_cast<float>(r.v[1] >> 8) * 0x1.0p-24f;
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

// keys[l][t][h][e] = 10 * (mu[l, h, comp][e] + 0.35 * noise / sqrt(d)), mu ~ N(0, 1/d) per
// element, comp = a random component of the head; values ~ N(0, 1).
template <typename T>
__global__ void GenKvKernel(int64_t total, int d, int kv_heads, int64_t tokens, int components,
                            T* keys, T* values) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int e = static_cast<int>(i % d);
    const int64_t row = i / d;
    const int h = static_cast<int>(row % kv_heads);
    const int64_t t = (row / kv_heads) % tokens;
    const int l = static_cast<int>(row / kv_heads / tokens);
    const uint32_t head = static_cast<uint32_t>(l * kv_heads + h);
    const sqz::cuda::Philox4 pick =
        sqz::cuda::Philox4x32(static_cast<uint32_t>(t), head, 7u, 0u, 0xc0ffeeu, 1u);
    const uint32_t comp = pick.v[0] % components;
    const float inv_sqrt_d = rsqrtf(static_cast<float>(d));
    const float mu = Gauss(static_cast<uint32_t>(e), head, comp, 1u) * inv_sqrt_d;
    const float noise =
        Gauss(static_cast<uint32_t>(t * d + e), head, static_cast<uint32_t>(t >> 26), 2u);
    const float key = 10.0f * (mu + 0.35f * noise * inv_sqrt_d);
    const float value =
        Gauss(static_cast<uint32_t>(t * d + e), head, static_cast<uint32_t>(t >> 26), 3u);
    if constexpr (sizeof(T) == 2) {
      keys[i] = __float2bfloat16_rn(key);
      values[i] = __float2bfloat16_rn(value);
    } else {
      keys[i] = key;
      values[i] = value;
    }
  }
}

// Window queries near random components of their KV head: q[l][t][qh][e].
__global__ void GenQueriesKernel(int64_t total, int d, int q_heads, int kv_heads, int64_t window,
                                 int components, float* q) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int e = static_cast<int>(i % d);
    const int64_t row = i / d;
    const int qh = static_cast<int>(row % q_heads);
    const int64_t t = (row / q_heads) % window;
    const int l = static_cast<int>(row / q_heads / window);
    const uint32_t head = static_cast<uint32_t>(l * kv_heads + qh / (q_heads / kv_heads));
    const sqz::cuda::Philox4 pick = sqz::cuda::Philox4x32(static_cast<uint32_t>(t), head,
                                                          static_cast<uint32_t>(qh), 9u, 5u, 6u);
    const uint32_t comp = pick.v[0] % components;
    const float inv_sqrt_d = rsqrtf(static_cast<float>(d));
    const float mu = Gauss(static_cast<uint32_t>(e), head, comp, 1u) * inv_sqrt_d;
    const float noise = Gauss(static_cast<uint32_t>(row * d + e), head, 11u, 4u);
    q[i] = 10.0f * (mu + 0.35f * noise * inv_sqrt_d);
  }
}

unsigned Blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 132 * 32));
}

// cuBLASLt bf16 GEMM rate (TFLOP/s) at 8192^3: median of 10 timed launches after warm-up.
double GemmTflops() {
  auto gemm = sqz::cuda::Gemm::Create();
  BENCH_CHECK_OK(gemm.status());
  const int64_t s = 8192;
  DeviceMem a(s * s * 2), b(s * s * 2), c(s * s * 2),
      ws(sqz::cuda::Gemm::kRecommendedWorkspaceBytes);
  GenKvKernel<bf16>
      <<<Blocks(s * s), 256>>>(s * s, 128, 1, s * s / 128, 4, a.as<bf16>(), b.as<bf16>());
  BENCH_CHECK_CUDA(cudaGetLastError());
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ms;
  for (int i = 0; i < 13; ++i) {
    cudaEventRecord(e0);
    BENCH_CHECK_OK(
        (*gemm)->MatMulTransB<bf16>(a.as<bf16>(), b.as<bf16>(), nullptr, s, s, s, c.as<bf16>(),
                                    ws.ptr, sqz::cuda::Gemm::kRecommendedWorkspaceBytes, nullptr));
    cudaEventRecord(e1);
    BENCH_CHECK_CUDA(cudaEventSynchronize(e1));
    float t = 0;
    cudaEventElapsedTime(&t, e0, e1);
    if (i >= 3) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return 2.0 * s * s * s / (ms[ms.size() / 2] * 1e-3) / 1e12;
}

// The CPU reference on one head of the benchmark's shape (host-generated mixture).
int CpuHead(const Args& a) {
  const int64_t body = a.tokens - 4 - 100, d = a.head_dim;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> mu(static_cast<size_t>(a.components) * d), x(static_cast<size_t>(body) * d);
  for (float& m : mu) m = g(rng) / std::sqrt(float(d));
  for (int64_t i = 0; i < body; ++i) {
    const int64_t c = rng() % a.components;
    for (int64_t e = 0; e < d; ++e)
      x[i * d + e] = 10.0f * (mu[c * d + e] + 0.35f * g(rng) / std::sqrt(float(d)));
  }
  sqz::KMeansOptions o;
  o.k = std::llround(0.05 * body);
  o.max_iterations = a.iterations;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = sqz::SphericalKMeans(x.data(), body, d, o);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  BENCH_CHECK_OK(r.status());
  std::printf(
      "cpu one head: n=%lld d=%lld k=%lld iterations=%d seconds=%.2f (%.3f s/iteration incl. "
      "seeding)\n",
      (long long)body, (long long)d, (long long)o.k, r->iterations, s, s / r->iterations);
  return 0;
}

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto next = [&]() -> long long {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", f.c_str());
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (f == "--layers")
      a.layers = static_cast<int>(next());
    else if (f == "--kv-heads")
      a.kv_heads = static_cast<int>(next());
    else if (f == "--q-heads")
      a.q_heads = static_cast<int>(next());
    else if (f == "--head-dim")
      a.head_dim = static_cast<int>(next());
    else if (f == "--tokens")
      a.tokens = next();
    else if (f == "--iterations")
      a.iterations = static_cast<int>(next());
    else if (f == "--reps")
      a.reps = static_cast<int>(next());
    else if (f == "--tolerance") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "--tolerance needs a value\n");
        std::exit(2);
      }
      a.tolerance = std::atof(argv[++i]);
    } else if (f == "--f32")
      a.f32 = true;
    else if (f == "--cpu-head")
      a.cpu_head = true;
    else {
      std::fprintf(stderr, "unknown flag %s\n", f.c_str());
      std::exit(2);
    }
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = Parse(argc, argv);
  if (a.cpu_head) return CpuHead(a);
  cudaDeviceProp prop{};
  BENCH_CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const double gemm_tflops = GemmTflops();

  sqz::cuda::IngestShape s;
  s.layers = a.layers;
  s.kv_heads = a.kv_heads;
  s.q_heads = a.q_heads;
  s.head_dim = a.head_dim;
  s.n_tokens = a.tokens;
  s.sink_len = 4;
  s.window_len = 100;
  const int64_t body = s.n_tokens - s.sink_len - s.window_len;
  s.k = std::llround(0.05 * body);
  s.k1 = std::llround(0.01 * body);
  const int heads = s.layers * s.kv_heads;
  const int64_t d = s.head_dim;
  const size_t elem = a.f32 ? 4 : 2;
  const int64_t kv_elems = static_cast<int64_t>(heads) * s.n_tokens * d;
  const int64_t q_elems = static_cast<int64_t>(s.layers) * s.window_len * s.q_heads * d;
  DeviceMem keys(kv_elems * elem), values(kv_elems * elem), wq(q_elems * 4);
  if (a.f32) {
    GenKvKernel<float><<<Blocks(kv_elems), 256>>>(kv_elems, s.head_dim, s.kv_heads, s.n_tokens,
                                                  a.components, keys.as<float>(),
                                                  values.as<float>());
  } else {
    GenKvKernel<bf16><<<Blocks(kv_elems), 256>>>(kv_elems, s.head_dim, s.kv_heads, s.n_tokens,
                                                 a.components, keys.as<bf16>(), values.as<bf16>());
  }
  GenQueriesKernel<<<Blocks(q_elems), 256>>>(q_elems, s.head_dim, s.q_heads, s.kv_heads,
                                             s.window_len, a.components, wq.as<float>());
  BENCH_CHECK_CUDA(cudaGetLastError());
  BENCH_CHECK_CUDA(cudaDeviceSynchronize());

  DeviceMem k_out(kv_elems * elem), v_out(kv_elems * elem), pos(heads * body * 4),
      cen(heads * s.k * d * 4), counts(heads * s.k * 4), offsets(heads * (s.k + 1) * 4),
      ccen(heads * s.k1 * d * 4), coff(heads * (s.k1 + 1) * 4), cmem(heads * s.k * 4),
      hist(2 * 8 * s.layers * sqz::cuda::kCalibrationBins), iters(heads * 4);
  auto ws_bytes = sqz::cuda::IngestWorkspaceBytes(s);
  BENCH_CHECK_OK(ws_bytes.status());
  DeviceMem ws(*ws_bytes);
  sqz::cuda::IngestOutputs out;
  out.k_out = k_out.ptr;
  out.v_out = v_out.ptr;
  out.positions = pos.as<int32_t>();
  out.centroids = cen.as<float>();
  out.counts = counts.as<int32_t>();
  out.offsets = offsets.as<int32_t>();
  out.coarse_centroids = ccen.as<float>();
  out.coarse_offsets = coff.as<int32_t>();
  out.coarse_members = cmem.as<int32_t>();
  out.histogram = hist.as<uint64_t>();
  out.iterations = iters.as<int32_t>();
  sqz::cuda::KMeansParams params;
  params.max_iterations = a.iterations;
  params.tolerance = a.tolerance;
  std::printf(
      "shape: %d layers x %d kv heads (%d q heads), d=%lld, %lld tokens (body %lld), "
      "k=%lld, k1=%lld, %s KV, workspace %.2f GB\n",
      s.layers, s.kv_heads, s.q_heads, (long long)d, (long long)s.n_tokens, (long long)body,
      (long long)s.k, (long long)s.k1, a.f32 ? "fp32" : "bf16", *ws_bytes / 1e9);

  std::vector<sqz::cuda::IngestTimings> runs;
  for (int r = 0; r < a.reps; ++r) {
    sqz::cuda::IngestTimings t;
    const auto t0 = std::chrono::steady_clock::now();
    BENCH_CHECK_OK(
        sqz::cuda::IngestContext(s, params, keys.ptr, values.ptr,
                                 a.f32 ? sqz::cuda::PointType::kF32 : sqz::cuda::PointType::kBf16,
                                 wq.as<float>(), out, ws.ptr, *ws_bytes, nullptr, &t));
    BENCH_CHECK_CUDA(cudaDeviceSynchronize());
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf(
        "run %d: total %.1f ms (wall %.1f ms): normalize %.1f seed %.1f assign %.1f "
        "update %.1f means %.1f | relayout %.1f coarse %.1f calibrate %.1f | "
        "iterations %d\n",
        r, t.total_ms, wall * 1e3, t.fine.normalize_ms, t.fine.seed_ms, t.fine.assign_ms,
        t.fine.update_ms, t.fine.final_ms, t.relayout_ms, t.coarse_ms, t.calibrate_ms,
        t.fine.loop_iterations);
    runs.push_back(t);
  }

  // Invariants of the result: every cluster non-empty, CSR consistent, positions a permutation.
  std::vector<int32_t> h_counts(heads * s.k), h_off(heads * (s.k + 1)), h_pos(heads * body);
  BENCH_CHECK_CUDA(
      cudaMemcpy(h_counts.data(), counts.ptr, h_counts.size() * 4, cudaMemcpyDeviceToHost));
  BENCH_CHECK_CUDA(cudaMemcpy(h_off.data(), offsets.ptr, h_off.size() * 4, cudaMemcpyDeviceToHost));
  BENCH_CHECK_CUDA(cudaMemcpy(h_pos.data(), pos.ptr, h_pos.size() * 4, cudaMemcpyDeviceToHost));
  int64_t bad = 0;
  for (int h = 0; h < heads; ++h) {
    const int32_t* off = h_off.data() + h * (s.k + 1);
    bad += off[0] != 0 || off[s.k] != body;
    for (int64_t c = 0; c < s.k; ++c) {
      bad += h_counts[h * s.k + c] < 1 || off[c + 1] - off[c] != h_counts[h * s.k + c];
    }
    std::vector<char> seen(body, 0);
    for (int64_t j = 0; j < body; ++j) {
      const int64_t p = h_pos[h * body + j] - s.sink_len;
      if (p < 0 || p >= body || seen[p]) {
        ++bad;
      } else {
        seen[p] = 1;
      }
    }
  }
  std::printf("invariants: %s (%lld violations)\n", bad == 0 ? "OK" : "FAILED", (long long)bad);

  const sqz::cuda::IngestTimings& t = runs.back();
  const int it = std::max(1, t.fine.loop_iterations);
  const double flop_iter = 2.0 * heads * body * s.k * d;
  const double assign_tflops = flop_iter * it / (t.fine.assign_ms * 1e-3) / 1e12;
  const double xn_bytes = static_cast<double>(heads) * body * d * 2;
  std::printf("\n| stage | ms |\n|---|---|\n");
  std::printf("| normalize (unit bf16 copies) | %.1f |\n", t.fine.normalize_ms);
  std::printf("| seeding (batched D^2, 32 rounds) | %.1f |\n", t.fine.seed_ms);
  std::printf("| assignment, %d iterations (%.1f ms each) | %.1f |\n", it, t.fine.assign_ms / it,
              t.fine.assign_ms);
  std::printf("| update: reseed + sort + CSR + directions (%.1f ms each) | %.1f |\n",
              t.fine.update_ms / it, t.fine.update_ms);
  std::printf("| raw means | %.1f |\n", t.fine.final_ms);
  std::printf("| re-layout K and V | %.1f |\n", t.relayout_ms);
  std::printf("| coarse level | %.1f |\n", t.coarse_ms);
  std::printf("| calibration | %.1f |\n", t.calibrate_ms);
  std::printf("| **total** | **%.1f** |\n", t.total_ms);
  std::printf(
      "\nassignment: %.1f TFLOP per iteration, %.0f TFLOP/s achieved = %.0f%% of the "
      "measured cuBLASLt bf16 GEMM rate (%.0f TFLOP/s at 8192^3); floor for %d iterations "
      "at that rate %.0f ms\n",
      flop_iter / 1e12, assign_tflops, 100.0 * assign_tflops / gemm_tflops, gemm_tflops, it,
      flop_iter * it / (gemm_tflops * 1e12) * 1e3);
  std::printf(
      "bytes per iteration: unit keys %.2f GB read by the assignment (+ centroids %.2f GB "
      "per head tile pass, from L2) and again by the update\n",
      xn_bytes / 1e9, static_cast<double>(heads) * s.k * d * 2 / 1e9);
  std::printf("goal <= 5000 ms: %s\n", t.total_ms <= 5000.0f ? "met" : "MISSED");
  return bad == 0 ? 0 : 1;
}
