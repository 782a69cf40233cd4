// sqz_cuda_bench: times the kernels of kernels/cuda on the current GPU against ceilings measured in
// the same run (device-to-device copy bandwidth, cuBLASLt bf16 matrix rate at 8192^3), and prints
// ratios. Usage: sqz_cuda_bench [copy|gemm|decode|decode-fixed|prefill|ops|all] (default all).
// `ops`: the small kernels of a decode step (Llama-3-8B shapes), each replayed 20 times back to
// back from a CUDA graph as in a step: RMSNorm's two paths, RoPE + KV write, and the MLP's gate/up
// GEMV + SwiGLU and the QKV GEMV + RoPE + KV write as two launches against the fused ones.
// `decode-fixed`: the decode attention's cost at batch 1 against the context length (512 to 128K
// keys, the planner's split and forced ones), replayed from graphs as in a step: the intercept is
// the per-launch cost that no bandwidth pays for.
//
// Timing: CUDA events around `reps` launches after warm-up; the median of the per-launch times.
// Inputs are random (never zeros); decode inputs rotate over several KV sets when one set would
// fit in L2.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/common/cuda_bench_util.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/model_ops.h"
#include "kernels/cuda/prefill_attention.h"

namespace {

using sqz::bench::DeviceMem;
using sqz::bench::Median;

using bf16 = __nv_bfloat16;

// Fills n bf16 with roughly normal(0, 1) values: a 64 MiB random pool made once on the host, then
// tiled over dst by device copies from a seed-dependent offset (generating gigabytes on the host
// would take minutes; repeated content does not help a cache, which works on addresses).
void FillRandomBf16(bf16* dst, size_t n, uint32_t seed) {
  static bf16* pool = nullptr;
  constexpr size_t kPool = size_t{1} << 25;
  if (pool == nullptr) {
    std::vector<bf16> host(kPool);
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < kPool; ++i) {
      float acc = 0.0f;  // sum of 4 uniforms: cheap, roughly normal
      for (int k = 0; k < 4; ++k) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        acc += static_cast<float>(state >> 40) * (1.0f / 16777216.0f);
      }
      host[i] = __float2bfloat16((acc - 2.0f) * 1.7f);
    }
    BENCH_CHECK_CUDA(cudaMalloc(&pool, kPool * sizeof(bf16)));
    BENCH_CHECK_CUDA(cudaMemcpy(pool, host.data(), kPool * sizeof(bf16), cudaMemcpyHostToDevice));
  }
  size_t offset = (size_t{seed} * 7919) % (kPool / 2);
  for (size_t done = 0; done < n;) {
    const size_t m = std::min(kPool - offset, n - done);
    BENCH_CHECK_CUDA(
        cudaMemcpy(dst + done, pool + offset, m * sizeof(bf16), cudaMemcpyDeviceToDevice));
    done += m;
    offset = 0;
  }
}

// Median milliseconds per call of fn over reps calls, after at least `warmup` calls and at least
// kWarmupSeconds of them: a few calls of a ~150 us kernel left the first variant of a table to
// run while the clocks were still rising after host-side setup (the same split measured ~10%
// slower first than later in the same run).
constexpr double kWarmupSeconds = 0.2;

double TimeMs(const std::function<void(int)>& fn, int warmup, int reps) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0;; ++i) {
    fn(i);
    BENCH_CHECK_CUDA(cudaDeviceSynchronize());
    const std::chrono::duration<double> spent = std::chrono::steady_clock::now() - start;
    if (i + 1 >= warmup && spent.count() >= kWarmupSeconds) break;
  }
  cudaEvent_t a, b;
  BENCH_CHECK_CUDA(cudaEventCreate(&a));
  BENCH_CHECK_CUDA(cudaEventCreate(&b));
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    BENCH_CHECK_CUDA(cudaEventRecord(a));
    fn(i);
    BENCH_CHECK_CUDA(cudaEventRecord(b));
    BENCH_CHECK_CUDA(cudaEventSynchronize(b));
    float t = 0.0f;
    BENCH_CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  BENCH_CHECK_CUDA(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int NumSms() {
  int sms = 0;
  BENCH_CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  return sms;
}

// ---- Ceilings -----------------------------------------------------------------------------------
double g_copy_gbps = 0.0;    // D2D copy, bytes read + written per second / 1e9
double g_gemm_tflops = 0.0;  // cuBLASLt bf16 8192^3

void BenchCopy() {
  const size_t bytes = size_t{2} << 30;
  DeviceMem src(bytes), dst(bytes);
  BENCH_CHECK_CUDA(cudaMemset(src.ptr, 0x3c, bytes));
  const double ms = TimeMs(
      [&](int) {
        BENCH_CHECK_CUDA(cudaMemcpyAsync(dst.ptr, src.ptr, bytes, cudaMemcpyDeviceToDevice));
      },
      3, 15);
  g_copy_gbps = 2.0 * bytes / (ms * 1e-3) / 1e9;
  std::printf("copy   D2D %zu MiB: %.3f ms, %.0f GB/s (read + write)\n", bytes >> 20, ms,
              g_copy_gbps);
}

void BenchGemm() {
  auto gemm_or = sqz::cuda::Gemm::Create();
  BENCH_CHECK_OK(gemm_or.status());
  sqz::cuda::Gemm& gemm = **gemm_or;
  DeviceMem ws(sqz::cuda::Gemm::kRecommendedWorkspaceBytes);
  struct Shape {
    int64_t m, n, k;
    const char* what;
  };
  const Shape shapes[] = {
      {8192, 8192, 8192, "peak reference"},
      {4096, 4096, 4096, "prefill 4K tokens, Llama-8B q/o proj"},
      {4096, 28672, 4096, "prefill 4K tokens, Llama-8B gate_up"},
      {4096, 4096, 14336, "prefill 4K tokens, Llama-8B down"},
      {512, 6144, 4096, "chunk 512, Llama-8B qkv"},
      {16, 6144, 4096, "decode batch 16, qkv"},
      {1, 28672, 4096, "decode batch 1, gate_up"},
      {16, 28672, 4096, "decode batch 16, gate_up"},
      {64, 1536, 576, "SmolLM2 batch 64 gate_up"},
  };
  std::printf("\n%-44s %6s %6s %6s %10s %9s %8s %9s\n", "gemm (bf16 in, bf16 out)", "m", "n", "k",
              "ms", "TFLOP/s", "of peak", "W GB/s");
  for (const Shape& s : shapes) {
    DeviceMem a(s.m * s.k * 2), w(s.n * s.k * 2), out(s.m * s.n * 2);
    FillRandomBf16(a.as<bf16>(), s.m * s.k, 1);
    FillRandomBf16(w.as<bf16>(), s.n * s.k, 2);
    const int reps = s.m * s.n * s.k > (int64_t{1} << 36) ? 10 : 50;
    const double ms = TimeMs(
        [&](int) {
          BENCH_CHECK_OK(gemm.MatMulTransB<bf16>(a.as<bf16>(), w.as<bf16>(), nullptr, s.m, s.n, s.k,
                                                 out.as<bf16>(), ws.ptr, ws.bytes, nullptr));
        },
        3, reps);
    const double tflops = 2.0 * s.m * s.n * s.k / (ms * 1e-3) / 1e12;
    if (s.m == 8192 && s.n == 8192) g_gemm_tflops = tflops;
    const double wgbps = (s.n * s.k * 2.0 + s.m * s.k * 2.0 + s.m * s.n * 2.0) / (ms * 1e-3) / 1e9;
    std::printf("%-44s %6ld %6ld %6ld %10.4f %9.1f %7.0f%% %9.0f\n", s.what, long(s.m), long(s.n),
                long(s.k), ms, tflops, 100.0 * tflops / g_gemm_tflops, wgbps);
  }
}

// ---- Decode attention ---------------------------------------------------------------------------
// Decode over fixed contexts of lens[r] keys (device array) at most max_len, one query token per
// request; the caller sets the K/V pointer arrays.
sqz::cuda::DecodeAttentionParams DecodeParams(int batch, int hq, int hkv, int d, const bf16* q,
                                              const int32_t* lens, int64_t max_len) {
  sqz::cuda::DecodeAttentionParams p;
  p.batch = batch;
  p.n_q_heads = hq;
  p.n_kv_heads = hkv;
  p.head_dim = d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.q = q;
  p.q_stride = static_cast<int64_t>(hq) * d;
  p.ctx_len = lens;
  p.max_kv_len = max_len;
  return p;
}

void BenchDecode() {
  const int hq = 32, hkv = 8, d = 128;
  const int sms = NumSms();
  std::printf("\n%-34s %8s %8s %10s %9s %9s %9s\n", "decode attention (32q/8kv, d=128)", "chunk",
              "chunks", "us", "KV GB/s", "floor us", "x floor");
  for (int64_t ctx : {32768, 131072}) {
    for (int batch : {1, 16}) {
      const size_t per_head = size_t(ctx) * d;
      const size_t set_elems = size_t(batch) * hkv * per_head;  // K of all requests
      const size_t kv_bytes = 2 * set_elems * sizeof(bf16);
      const int sets = static_cast<int>(std::max<size_t>(1, (size_t{1} << 30) / kv_bytes));
      DeviceMem k(set_elems * 2 * sets), v(set_elems * 2 * sets);
      FillRandomBf16(k.as<bf16>(), set_elems * sets, 3);
      FillRandomBf16(v.as<bf16>(), set_elems * sets, 4);
      DeviceMem q(size_t(batch) * hq * d * 2), out(size_t(batch) * hq * d * 2);
      FillRandomBf16(q.as<bf16>(), size_t(batch) * hq * d, 5);
      // Per set, the device arrays of context pointers.
      std::vector<std::unique_ptr<DeviceMem>> kp, vp;
      for (int s = 0; s < sets; ++s) {
        std::vector<const bf16*> hk(batch), hv(batch);
        for (int r = 0; r < batch; ++r) {
          hk[r] = k.as<bf16>() + size_t(s) * set_elems + size_t(r) * hkv * per_head;
          hv[r] = v.as<bf16>() + size_t(s) * set_elems + size_t(r) * hkv * per_head;
        }
        kp.push_back(std::make_unique<DeviceMem>(batch * sizeof(void*)));
        vp.push_back(std::make_unique<DeviceMem>(batch * sizeof(void*)));
        BENCH_CHECK_CUDA(
            cudaMemcpy(kp.back()->ptr, hk.data(), batch * sizeof(void*), cudaMemcpyHostToDevice));
        BENCH_CHECK_CUDA(
            cudaMemcpy(vp.back()->ptr, hv.data(), batch * sizeof(void*), cudaMemcpyHostToDevice));
      }
      std::vector<int32_t> lens(batch, static_cast<int32_t>(ctx));
      DeviceMem len(batch * 4);
      BENCH_CHECK_CUDA(cudaMemcpy(len.ptr, lens.data(), batch * 4, cudaMemcpyHostToDevice));
      sqz::cuda::DecodeAttentionParams p =
          DecodeParams(batch, hq, hkv, d, q.as<bf16>(), len.as<int32_t>(), ctx);
      const double floor_us = kv_bytes / (g_copy_gbps * 1e9) * 1e6;
      // Each split twice: the merge fused into the chunk kernel (default), then the previous
      // path, a separate merge kernel (rows marked "[old]").
      for (int64_t force : {int64_t{0}, int64_t{256}, int64_t{1024}, int64_t{4096}})
        for (bool fused : {true, false}) {
          sqz::cuda::DecodePlanOptions options;
          options.force_chunk_len = force;
          options.fused_merge = fused;
          const sqz::cuda::DecodePlan plan = sqz::cuda::PlanDecodeAttention(p, sms, options);
          DeviceMem ws(plan.workspace_bytes);
          if (plan.workspace_bytes > 0) {  // the merge counters start zero
            BENCH_CHECK_CUDA(cudaMemset(ws.ptr, 0, plan.workspace_bytes));
          }
          const double ms = TimeMs(
              [&](int i) {
                p.ctx_k = kp[i % sets]->as<const bf16*>();
                p.ctx_v = vp[i % sets]->as<const bf16*>();
                BENCH_CHECK_OK(sqz::cuda::DecodeAttention<bf16>(p, plan, out.as<bf16>(), nullptr,
                                                                ws.ptr, ws.bytes, nullptr));
              },
              3, 30);
          char name[64];
          std::snprintf(name, sizeof(name), "ctx %ldK batch %d%s%s", long(ctx / 1024), batch,
                        force == 0 ? " (planner)" : "", fused ? "" : " [old]");
          std::printf("%-34s %8ld %8d %10.1f %9.0f %9.1f %9.2f\n", name, long(plan.chunk_len),
                      plan.num_chunks, ms * 1e3, kv_bytes / (ms * 1e-3) / 1e9, floor_us,
                      ms * 1e3 / floor_us);
        }
    }
  }
}

// ---- Prefill attention --------------------------------------------------------------------------
// Relative L2 distance between two bf16 device arrays of n elements (host-side; for a sanity line).
double RelativeL2Bf16(const bf16* a, const bf16* b, size_t n) {
  std::vector<bf16> ha(n), hb(n);
  BENCH_CHECK_CUDA(cudaMemcpy(ha.data(), a, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  BENCH_CHECK_CUDA(cudaMemcpy(hb.data(), b, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double x = __bfloat162float(ha[i]), y = __bfloat162float(hb[i]);
    num += (x - y) * (x - y);
    den += y * y;
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Both tensor-core kernels (PrefillKernel::kWide, the default, and kNarrow) on the same inputs:
// time, rate, share of the measured GEMM peak, wide / narrow speed-up, and the relative L2
// distance between their outputs (bf16 rounding: expect about 1e-3, never above 1e-2).
void BenchPrefill() {
  const int hq = 32, hkv = 8;
  std::printf("\n%-34s %10s %9s %8s %8s %9s\n", "prefill attention (causal, 32q/8kv)", "ms",
              "TFLOP/s", "of peak", "x narrow", "rel L2");
  for (int d : {128, 64}) {
    for (int64_t n : {4096, 32768}) {
      DeviceMem q(n * hq * d * 2), k(n * hkv * d * 2), v(n * hkv * d * 2);
      DeviceMem out_wide(n * hq * d * 2), out_narrow(n * hq * d * 2);
      FillRandomBf16(q.as<bf16>(), n * hq * d, 6);
      FillRandomBf16(k.as<bf16>(), n * hkv * d, 7);
      FillRandomBf16(v.as<bf16>(), n * hkv * d, 8);
      sqz::cuda::PrefillAttentionParams p;
      p.q = q.as<bf16>();
      p.q_token_stride = hq * d;
      p.k = k.as<bf16>();
      p.v = v.as<bf16>();
      p.kv_token_stride = hkv * d;
      p.kv_head_stride = d;
      p.n_q = p.n_kv = n;
      p.n_q_heads = hq;
      p.n_kv_heads = hkv;
      p.head_dim = d;
      p.scale = 1.0f / std::sqrt(static_cast<float>(d));
      p.causal = true;
      // Causal: half of the n x n scores; QK^T and PV at 2 flops per multiply-add each.
      const double flops = 2.0 * 2.0 * n * n / 2.0 * d * hq;
      double narrow_ms = 0.0;
      for (auto kernel : {sqz::cuda::PrefillKernel::kNarrow, sqz::cuda::PrefillKernel::kWide}) {
        const bool wide = kernel == sqz::cuda::PrefillKernel::kWide;
        p.kernel = kernel;
        bf16* out = wide ? out_wide.as<bf16>() : out_narrow.as<bf16>();
        const double ms = TimeMs(
            [&](int) {
              BENCH_CHECK_OK(sqz::cuda::PrefillAttention<bf16>(p, out, hq * d, nullptr, nullptr));
            },
            2, n > 8192 ? 5 : 20);
        if (!wide) narrow_ms = ms;
        const double tflops = flops / (ms * 1e-3) / 1e12;
        char name[64];
        std::snprintf(name, sizeof(name), "n %ldK d %d %s", long(n / 1024), d,
                      wide ? "wide" : "narrow");
        std::printf("%-34s %10.3f %9.1f %7.0f%% %8.2f", name, ms, tflops,
                    g_gemm_tflops > 0 ? 100.0 * tflops / g_gemm_tflops : 0.0, narrow_ms / ms);
        if (wide) {
          std::printf(" %9.1e\n", RelativeL2Bf16(out_wide.as<bf16>(), out_narrow.as<bf16>(),
                                                 static_cast<size_t>(n) * hq * d));
        } else {
          std::printf(" %9s\n", "-");
        }
      }
    }
  }
}

// ---- Small decode-step kernels --------------------------------------------------------------
// Microseconds per repetition of `record` (which enqueues one repetition on a stream), captured
// 20 times into one graph and replayed.
double GraphUsPerRep(const std::function<void(cudaStream_t)>& record) {
  constexpr int kReps = 20;
  cudaStream_t stream = nullptr;
  BENCH_CHECK_CUDA(cudaStreamCreate(&stream));  // blocking: ordered with the timing events
  BENCH_CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  for (int i = 0; i < kReps; ++i) record(stream);
  cudaGraph_t graph = nullptr;
  BENCH_CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  BENCH_CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  const double ms = TimeMs([&](int) { BENCH_CHECK_CUDA(cudaGraphLaunch(exec, stream)); }, 5, 50);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  return ms * 1e3 / kReps;
}

void BenchOps() {
  const int64_t hidden = 4096, inter = 14336, q_heads = 32, kv_heads = 8, d = 128;
  const int64_t qkv_dim = (q_heads + 2 * kv_heads) * d;
  auto pdl_plan = sqz::cuda::PlanGemv(sqz::cuda::GemvKernel::kWarpPerRow, true);
  if (!pdl_plan.ok()) std::exit(1);
  // y: the GEMVs' 8 input rows, then room for the norms' 8 output rows (+ 1 element for the
  // unaligned variant).
  DeviceMem x(8 * hidden * 4), delta(8 * hidden * 2), w(hidden * 2), y(16 * hidden * 2 + 16);
  FillRandomBf16(delta.as<bf16>(), 8 * hidden, 1);
  FillRandomBf16(w.as<bf16>(), hidden, 2);
  BENCH_CHECK_CUDA(cudaMemset(x.ptr, 0, x.bytes));
  DeviceMem qkv(8 * qkv_dim * 2), pos(8 * 4), slots(8 * 4), inv_freq(d / 2 * 4);
  DeviceMem pool_k(16 * kv_heads * d * 2), pool_v(16 * kv_heads * d * 2);
  FillRandomBf16(qkv.as<bf16>(), 8 * qkv_dim, 3);
  {
    std::vector<int32_t> p(8);
    for (int i = 0; i < 8; ++i) p[i] = 1000 + i;
    std::vector<int32_t> sl(8);
    for (int i = 0; i < 8; ++i) sl[i] = i;
    std::vector<float> f(d / 2);
    for (int i = 0; i < d / 2; ++i) f[i] = std::pow(500000.0f, -2.0f * i / d);
    BENCH_CHECK_CUDA(cudaMemcpy(pos.ptr, p.data(), 32, cudaMemcpyHostToDevice));
    BENCH_CHECK_CUDA(cudaMemcpy(slots.ptr, sl.data(), 32, cudaMemcpyHostToDevice));
    BENCH_CHECK_CUDA(cudaMemcpy(inv_freq.ptr, f.data(), f.size() * 4, cudaMemcpyHostToDevice));
  }
  DeviceMem wgu(2 * inter * hidden * 2), gate_up(8 * 2 * inter * 2), act(8 * inter * 2);
  FillRandomBf16(wgu.as<bf16>(), 2 * inter * hidden, 4);
  FillRandomBf16(y.as<bf16>(), 8 * hidden, 5);  // the GEMV's input rows

  std::printf("\n%-52s %8s %8s\n", "small decode-step kernels (graph, 20 back to back)", "m = 1",
              "m = 8");
  auto row = [&](const char* name, const std::function<void(cudaStream_t, int64_t)>& op) {
    std::printf("%-52s", name);
    for (int64_t m : {1, 8})
      std::printf(" %8.2f", GraphUsPerRep([&](cudaStream_t s) { op(s, m); }));
    std::printf("  us\n");
  };
  row("AddRmsNorm d 4096, vectorised path", [&](cudaStream_t s, int64_t m) {
    BENCH_CHECK_OK(sqz::cuda::AddRmsNorm<bf16>(x.as<float>(), delta.as<bf16>(), w.as<bf16>(), m,
                                               hidden, 1e-5f, y.as<bf16>() + 8 * hidden, s));
  });
  row("AddRmsNorm d 4096, strided path (y unaligned)", [&](cudaStream_t s, int64_t m) {
    BENCH_CHECK_OK(sqz::cuda::AddRmsNorm<bf16>(x.as<float>(), delta.as<bf16>(), w.as<bf16>(), m,
                                               hidden, 1e-5f, y.as<bf16>() + 8 * hidden + 1, s));
  });
  row("RopeWritePagedKv 32/8 heads d 128", [&](cudaStream_t s, int64_t m) {
    BENCH_CHECK_OK(sqz::cuda::RopeWritePagedKv<bf16>(
        qkv.as<bf16>(), qkv_dim, pos.as<int32_t>(), slots.as<int32_t>(), m, q_heads, kv_heads, d,
        inv_freq.as<float>(), pool_k.as<bf16>(), pool_v.as<bf16>(), s));
  });
  row("gate_up Gemv 28672 x 4096 + SwiGlu (PDL)", [&](cudaStream_t s, int64_t m) {
    BENCH_CHECK_OK(sqz::cuda::Gemv<bf16>(*pdl_plan, y.as<bf16>(), wgu.as<bf16>(), nullptr, m,
                                         2 * inter, hidden, gate_up.as<bf16>(), s));
    BENCH_CHECK_OK(sqz::cuda::SwiGlu<bf16>(gate_up.as<bf16>(), m, inter, act.as<bf16>(), s));
  });
  row("GemvSwiGlu, one launch (PDL)", [&](cudaStream_t s, int64_t m) {
    BENCH_CHECK_OK(sqz::cuda::GemvSwiGlu(*pdl_plan, y.as<bf16>(), wgu.as<bf16>(), m, inter, hidden,
                                         act.as<bf16>(), s));
  });
  DeviceMem wqkv(qkv_dim * hidden * 2);
  FillRandomBf16(wqkv.as<bf16>(), qkv_dim * hidden, 6);
  row("qkv Gemv 6144 x 4096 + RopeWritePagedKv (PDL)", [&](cudaStream_t s, int64_t m) {
    BENCH_CHECK_OK(sqz::cuda::Gemv<bf16>(*pdl_plan, y.as<bf16>(), wqkv.as<bf16>(), nullptr, m,
                                         qkv_dim, hidden, qkv.as<bf16>(), s));
    BENCH_CHECK_OK(sqz::cuda::RopeWritePagedKv<bf16>(
        qkv.as<bf16>(), qkv_dim, pos.as<int32_t>(), slots.as<int32_t>(), m, q_heads, kv_heads, d,
        inv_freq.as<float>(), pool_k.as<bf16>(), pool_v.as<bf16>(), s));
  });
  row("GemvQkvRope, one launch (PDL)", [&](cudaStream_t s, int64_t m) {
    sqz::cuda::QkvRopeArgs r;
    r.q_heads = q_heads;
    r.kv_heads = kv_heads;
    r.head_dim = d;
    r.positions = pos.as<int32_t>();
    r.slots = slots.as<int32_t>();
    r.inv_freq = inv_freq.as<float>();
    r.pool_k = pool_k.as<bf16>();
    r.pool_v = pool_v.as<bf16>();
    BENCH_CHECK_OK(sqz::cuda::GemvQkvRope(*pdl_plan, y.as<bf16>(), wqkv.as<bf16>(), nullptr, m,
                                          hidden, r, qkv.as<bf16>(), s));
  });
  const double weight_us = 2.0 * inter * hidden * 2 / (g_copy_gbps * 1e9) * 1e6;
  std::printf("(the gate/up weights, %.0f MB, at the copy bandwidth: %.2f us)\n",
              2.0 * inter * hidden * 2 / 1e6, weight_us);
}

// ---- Decode attention's fixed cost at batch 1 ---------------------------------------------------
void BenchDecodeFixed() {
  const int hq = 32, hkv = 8, d = 128;
  const int sms = NumSms();
  std::printf("\n%-40s %8s %8s %10s %10s %9s\n", "decode attention b1 (graph, 20 in a row)",
              "chunk", "chunks", "us", "floor us", "us-floor");
  for (int64_t ctx : {512, 2048, 8192, 32768, 131072}) {
    const size_t elems = size_t(hkv) * ctx * d;
    DeviceMem k(elems * 2), v(elems * 2), q(hq * d * 2), out(hq * d * 2);
    FillRandomBf16(k.as<bf16>(), elems, 3);
    FillRandomBf16(v.as<bf16>(), elems, 4);
    FillRandomBf16(q.as<bf16>(), hq * d, 5);
    DeviceMem kp(sizeof(void*)), vp(sizeof(void*)), len(4);
    const bf16* hk = k.as<bf16>();
    const bf16* hv = v.as<bf16>();
    const int32_t l = static_cast<int32_t>(ctx);
    BENCH_CHECK_CUDA(cudaMemcpy(kp.ptr, &hk, sizeof(void*), cudaMemcpyHostToDevice));
    BENCH_CHECK_CUDA(cudaMemcpy(vp.ptr, &hv, sizeof(void*), cudaMemcpyHostToDevice));
    BENCH_CHECK_CUDA(cudaMemcpy(len.ptr, &l, 4, cudaMemcpyHostToDevice));
    sqz::cuda::DecodeAttentionParams p =
        DecodeParams(1, hq, hkv, d, q.as<bf16>(), len.as<int32_t>(), ctx);
    p.ctx_k = kp.as<const bf16*>();
    p.ctx_v = vp.as<const bf16*>();
    const double floor_us = 2.0 * elems * 2 / (g_copy_gbps * 1e9) * 1e6;
    for (int64_t force : {int64_t{0}, int64_t{256}, int64_t{1024}, int64_t{4096}}) {
      if (force > ctx) continue;
      sqz::cuda::DecodePlanOptions options;
      options.force_chunk_len = force;
      const sqz::cuda::DecodePlan plan = sqz::cuda::PlanDecodeAttention(p, sms, options);
      DeviceMem ws(plan.workspace_bytes);
      if (plan.workspace_bytes > 0) BENCH_CHECK_CUDA(cudaMemset(ws.ptr, 0, plan.workspace_bytes));
      const double us = GraphUsPerRep([&](cudaStream_t s) {
        BENCH_CHECK_OK(sqz::cuda::DecodeAttention<bf16>(p, plan, out.as<bf16>(), nullptr, ws.ptr,
                                                        ws.bytes, s));
      });
      char name[64];
      std::snprintf(name, sizeof(name), "ctx %ld%s", long(ctx), force == 0 ? " (planner)" : "");
      std::printf("%-40s %8ld %8d %10.2f %10.2f %9.2f\n", name, long(plan.chunk_len),
                  plan.num_chunks, us, floor_us, us - floor_us);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // lines survive a timeout
  const std::string what = argc > 1 ? argv[1] : "all";
  cudaDeviceProp prop;
  BENCH_CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.0f MiB, L2 %d MiB\n", prop.name, prop.multiProcessorCount,
              prop.totalGlobalMem / 1048576.0, prop.l2CacheSize >> 20);
  BenchCopy();
  if (what == "all" || what == "gemm" || what == "prefill") BenchGemm();
  if (what == "all" || what == "decode") BenchDecode();
  if (what == "all" || what == "prefill") BenchPrefill();
  if (what == "all" || what == "ops") BenchOps();
  if (what == "all" || what == "decode-fixed") BenchDecodeFixed();
  return 0;
}
