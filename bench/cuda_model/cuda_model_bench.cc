// sqz_cuda_model_bench: the whole model on the GPU (CudaBackend, bf16) with random weights made on
// the device, timed against ceilings measured in the same run:
//   * device-to-device copy bandwidth (read + write bytes) and the cuBLASLt bf16 GEMM rate;
//   * prefill of a `context`-token sequence in chunks: tokens/s and its FLOP rate as a share of
//     the measured GEMM rate;
//   * decode's linear layers alone, per shape and row count 1..8: the warp-per-row and the
//     streaming Gemv (kernels/cuda/gemv.h) and cuBLASLt, as a share of the copy bandwidth;
//   * decode at batch 1 after that prefill: median step time against the memory floor
//     (weights read by a step + the sequence's KV bytes, over the copy bandwidth), kernel by
//     kernel, replaying CUDA graphs, and with greedy sampling on the device, with the streaming
//     Gemv and with the warp-per-row one;
//   * decode throughput at batch `batch` (each sequence with a `batch_prompt`-token prompt), with
//     logits to the host and with greedy sampling on the device.
// Usage: sqz_cuda_model_bench [--layers 32] [--context 32768] [--chunk 4096] [--steps 64]
//                             [--batch 64] [--batch-prompt 512]
// Shapes are Llama-3-8B's (hidden 4096, 32 q / 8 kv heads, d 128, intermediate 14336, vocab
// 128256, llama3 RoPE); --layers scales the depth. Forward synchronises, so steps are timed with
// the host clock around each call (launch overheads included, as a server sees them).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/common/cuda_bench_util.h"
#include "bench/common/model_shapes.h"
#include "engine/cuda/cuda_backend.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/model_ops.h"

namespace {

using sqz::bench::IntArg;
using sqz::bench::Llama3_8B;
using sqz::bench::Median;
using sqz::bench::RandomTokens;

using bf16 = __nv_bfloat16;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Median time (ms) of `reps` runs of fn on `stream` (nullptr: the default stream), timed with
// events.
template <typename Fn>
double TimeOn(cudaStream_t stream, int reps, Fn fn) {
  cudaEvent_t a, b;
  BENCH_CHECK_CUDA(cudaEventCreate(&a));
  BENCH_CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    BENCH_CHECK_CUDA(cudaEventRecord(a, stream));
    fn();
    BENCH_CHECK_CUDA(cudaEventRecord(b, stream));
    BENCH_CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    BENCH_CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return Median(t);
}

// Copy bandwidth in GB/s (read + write bytes) over 2 GiB buffers of random data.
double CopyBandwidth() {
  const size_t bytes = size_t{2} << 30;
  void *src = nullptr, *dst = nullptr;
  BENCH_CHECK_CUDA(cudaMalloc(&src, bytes));
  BENCH_CHECK_CUDA(cudaMalloc(&dst, bytes));
  BENCH_CHECK_OK(sqz::cuda::FillUniform(static_cast<bf16*>(src), bytes / 2, 1.0f, 1, nullptr));
  const double ms = TimeOn(nullptr, 10, [&] {
    BENCH_CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
  });
  cudaFree(src);
  cudaFree(dst);
  return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

// cuBLASLt bf16 GEMM rate (TFLOP/s) at m = 8192, n = 14336, k = 4096 (an 8B MLP projection).
double GemmRate() {
  const int64_t m = 8192, n = 14336, k = 4096;
  void *a = nullptr, *w = nullptr, *out = nullptr, *ws = nullptr;
  BENCH_CHECK_CUDA(cudaMalloc(&a, m * k * 2));
  BENCH_CHECK_CUDA(cudaMalloc(&w, n * k * 2));
  BENCH_CHECK_CUDA(cudaMalloc(&out, m * n * 2));
  BENCH_CHECK_CUDA(cudaMalloc(&ws, sqz::cuda::Gemm::kRecommendedWorkspaceBytes));
  BENCH_CHECK_OK(sqz::cuda::FillUniform(static_cast<bf16*>(a), m * k, 1.0f, 2, nullptr));
  BENCH_CHECK_OK(sqz::cuda::FillUniform(static_cast<bf16*>(w), n * k, 0.02f, 3, nullptr));
  auto gemm = sqz::cuda::Gemm::Create();
  BENCH_CHECK_OK(gemm.status());
  const double ms = TimeOn(nullptr, 10, [&] {
    BENCH_CHECK_OK((*gemm)->MatMulTransB<bf16>(
        static_cast<bf16*>(a), static_cast<bf16*>(w), nullptr, m, n, k, static_cast<bf16*>(out), ws,
        sqz::cuda::Gemm::kRecommendedWorkspaceBytes, nullptr));
  });
  cudaFree(a);
  cudaFree(w);
  cudaFree(out);
  cudaFree(ws);
  return 2.0 * m * n * k / (ms * 1e-3) / 1e12;
}

// Decode's linear layers at 1..8 rows, per Llama-3-8B shape, weight copies rotated so that nothing
// is served from L2: the warp-per-row Gemv (old), the streaming Gemv (new) and cuBLASLt, each
// launch timed alone ("alone"), and the two Gemvs in runs of kRun launches on distinct weight
// copies ("in a run", per launch; the new one launched with PDL, as in a decode step where each
// Gemv follows another kernel). Returns one decode step's linear layers at m = 1 (layers x (qkv +
// o + gate_up + down) + LM head) in ms, {old alone, new alone, old in a run, new in a run}.
std::array<double, 4> LinearBreakdown(int64_t layers, double bw) {
  struct Shape {
    const char* name;
    int64_t n, k;
    int per_step;  // occurrences per decode step per layer (LM head: once per step)
  };
  const Shape shapes[] = {{"qkv", 6144, 4096, 1},
                          {"o", 4096, 4096, 1},
                          {"gate_up", 28672, 4096, 1},
                          {"down", 4096, 14336, 1},
                          {"lm_head (fp32 out)", 128256, 4096, 0}};
  constexpr int kRun = 8;
  auto gemm = sqz::cuda::Gemm::Create();
  BENCH_CHECK_OK(gemm.status());
  auto old_plan = sqz::cuda::PlanGemv(sqz::cuda::GemvKernel::kWarpPerRow, false);
  auto new_plan = sqz::cuda::PlanGemv(sqz::cuda::GemvKernel::kStreaming, true);
  auto new_plain = sqz::cuda::PlanGemv(sqz::cuda::GemvKernel::kStreaming, false);
  BENCH_CHECK_OK(old_plan.status());
  BENCH_CHECK_OK(new_plan.status());
  BENCH_CHECK_OK(new_plain.status());
  std::printf("\nGemv plan: %d SMs, streaming blocks per SM by m:", new_plan->sm_count);
  for (int b : new_plan->blocks_per_sm) std::printf(" %d", b);
  std::printf("\n");
  cudaStream_t stream = nullptr;
  BENCH_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  void* ws = nullptr;
  BENCH_CHECK_CUDA(cudaMalloc(&ws, sqz::cuda::Gemm::kRecommendedWorkspaceBytes));
  std::array<double, 4> step_ms = {0, 0, 0, 0};
  std::printf("%-18s %2s %7s %6s | %-13s %-13s %-13s | %-13s %-19s | %s\n", "linear", "m", "n", "k",
              "old alone", "new alone", "cuBLASLt", "old in a run", "new in a run (PDL)",
              "new/old");
  std::printf("%-18s %2s %7s %6s | %-13s %-13s %-13s | %-13s %-19s | %s\n", "", "", "", "",
              "us    GB/s", "us    GB/s", "us    GB/s", "us    GB/s", "us    GB/s  %copy",
              "alone run");
  for (const Shape& s : shapes) {
    const size_t wbytes = static_cast<size_t>(s.n) * s.k * 2;
    const int copies =
        static_cast<int>(std::max<size_t>(kRun + 1, (size_t{512} << 20) / wbytes + 1));
    bf16 *w = nullptr, *a = nullptr;
    void* out = nullptr;
    BENCH_CHECK_CUDA(cudaMalloc(&w, wbytes * copies));
    BENCH_CHECK_CUDA(cudaMalloc(&a, sqz::cuda::kGemvMaxRows * s.k * 2));
    BENCH_CHECK_CUDA(cudaMalloc(&out, sqz::cuda::kGemvMaxRows * s.n * 4));
    BENCH_CHECK_OK(
        sqz::cuda::FillUniform(w, static_cast<int64_t>(wbytes / 2) * copies, 0.02f, 5, nullptr));
    BENCH_CHECK_OK(sqz::cuda::FillUniform(a, sqz::cuda::kGemvMaxRows * s.k, 1.0f, 6, nullptr));
    BENCH_CHECK_CUDA(cudaDeviceSynchronize());
    const bool fp32 = s.per_step == 0;
    int i = 0;
    auto gemv = [&](const sqz::cuda::GemvPlan& plan, int64_t m) {
      const bf16* wi = w + (i++ % copies) * (wbytes / 2);
      if (fp32) {
        BENCH_CHECK_OK(sqz::cuda::Gemv<float>(plan, a, wi, nullptr, m, s.n, s.k,
                                              static_cast<float*>(out), stream));
      } else {
        BENCH_CHECK_OK(sqz::cuda::Gemv<bf16>(plan, a, wi, nullptr, m, s.n, s.k,
                                             static_cast<bf16*>(out), stream));
      }
    };
    auto lt = [&](int64_t m) {
      const bf16* wi = w + (i++ % copies) * (wbytes / 2);
      if (fp32) {
        BENCH_CHECK_OK(
            (*gemm)->MatMulTransB<float>(a, wi, nullptr, m, s.n, s.k, static_cast<float*>(out), ws,
                                         sqz::cuda::Gemm::kRecommendedWorkspaceBytes, stream));
      } else {
        BENCH_CHECK_OK(
            (*gemm)->MatMulTransB<bf16>(a, wi, nullptr, m, s.n, s.k, static_cast<bf16*>(out), ws,
                                        sqz::cuda::Gemm::kRecommendedWorkspaceBytes, stream));
      }
    };
    auto gbs = [&](double ms) { return wbytes / (ms * 1e-3) / 1e9; };
    for (int64_t m = 1; m <= sqz::cuda::kGemvMaxRows; ++m) {
      const double old1 = TimeOn(stream, 20, [&] { gemv(*old_plan, m); });
      const double new1 = TimeOn(stream, 20, [&] { gemv(*new_plain, m); });
      const double lt1 = TimeOn(stream, 20, [&] { lt(m); });
      const double old_run = TimeOn(stream, 10,
                                    [&] {
                                      for (int r = 0; r < kRun; ++r) gemv(*old_plan, m);
                                    }) /
                             kRun;
      const double new_run = TimeOn(stream, 10,
                                    [&] {
                                      for (int r = 0; r < kRun; ++r) gemv(*new_plan, m);
                                    }) /
                             kRun;
      std::printf(
          "%-18s %2lld %7lld %6lld | %6.1f %6.0f %6.1f %6.0f %6.1f %6.0f | %6.1f %6.0f %6.1f %6.0f "
          "%5.1f%% | %.2f %.2f\n",
          s.name, static_cast<long long>(m), static_cast<long long>(s.n),
          static_cast<long long>(s.k), old1 * 1e3, gbs(old1), new1 * 1e3, gbs(new1), lt1 * 1e3,
          gbs(lt1), old_run * 1e3, gbs(old_run), new_run * 1e3, gbs(new_run),
          100 * gbs(new_run) / bw, new1 / old1, new_run / old_run);
      if (m == 1) {
        const double times[4] = {old1, new1, old_run, new_run};
        for (int t = 0; t < 4; ++t) step_ms[t] += (s.per_step ? layers : 1) * times[t];
      }
    }
    cudaFree(w);
    cudaFree(a);
    cudaFree(out);
  }
  cudaFree(ws);
  cudaStreamDestroy(stream);
  std::printf(
      "one decode step's linear layers at m = 1: old %.3f ms alone, %.3f in runs; new %.3f ms "
      "alone, %.3f in runs (PDL); their weights at the %.0f GB/s copy bandwidth: see the floor "
      "below\n",
      step_ms[0], step_ms[2], step_ms[1], step_ms[3], bw);
  return step_ms;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t layers = IntArg(argc, argv, "--layers", 32);
  const int64_t context = IntArg(argc, argv, "--context", 32768);
  const int64_t chunk = IntArg(argc, argv, "--chunk", 4096);
  const int64_t steps = IntArg(argc, argv, "--steps", 64);
  const int64_t batch = IntArg(argc, argv, "--batch", 64);
  const int64_t batch_prompt = IntArg(argc, argv, "--batch-prompt", 512);

  cudaDeviceProp prop{};
  BENCH_CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
              prop.totalGlobalMem / double(1 << 30));
  const double bw = CopyBandwidth();
  const double gemm_tflops = GemmRate();
  std::printf(
      "ceilings: copy %.0f GB/s (read + write), cuBLASLt bf16 GEMM 8192x14336x4096 %.0f "
      "TFLOP/s\n",
      bw, gemm_tflops);

  const std::array<double, 4> linear_ms = LinearBreakdown(layers, bw);

  const sqz::ModelConfig c = Llama3_8B(layers, /*max_positions=*/131072);
  sqz::CudaBackendOptions o;
  o.dtype = sqz::CudaDType::kBf16;
  const int64_t tokens_needed =
      std::max(context + 3 * (steps + 3) + 16, batch * (batch_prompt + 2 * (steps + 3) + 16)) +
      64 * 16;
  o.kv_blocks = (tokens_needed + 15) / 16;
  o.max_step_tokens = std::max<int64_t>(chunk, batch);
  const auto t_create0 = Clock::now();
  auto backend_or = sqz::CudaBackend::CreateRandom(c, o, 2026);
  BENCH_CHECK_OK(backend_or.status());
  sqz::CudaBackend& b = **backend_or;
  const auto t_create1 = Clock::now();
  const double embed_bytes = 2.0 * c.vocab * c.hidden;
  std::printf(
      "model: Llama-3-8B shape, %lld layers, random bf16 weights %.2f GB made on the GPU in "
      "%.2f s; KV pool %.2f GB (%lld blocks)\n",
      static_cast<long long>(layers), b.weight_bytes() / 1e9, Seconds(t_create0, t_create1),
      b.kv_pool_bytes() / 1e9, static_cast<long long>(o.kv_blocks));

  // ---- Prefill `context` tokens in chunks.
  const auto prompt = RandomTokens(context, c.vocab, 1);
  std::vector<float> logits(std::max<int64_t>(batch, 1) * c.vocab);
  const sqz::SeqId seq = b.AddSequence().value();
  {
    // Warm-up on a throwaway sequence (cuBLASLt plans for the chunk shapes, module load).
    const sqz::SeqId w = b.AddSequence().value();
    sqz::StepInput in{w, {prompt.data(), static_cast<size_t>(std::min(chunk, context))}};
    BENCH_CHECK_OK(b.Forward({&in, 1}, logits.data()));
    BENCH_CHECK_OK(b.FreeSequence(w));
  }
  const auto t0 = Clock::now();
  for (int64_t done = 0; done < context; done += chunk) {
    const int64_t n = std::min(chunk, context - done);
    sqz::StepInput in{seq, {prompt.data() + done, static_cast<size_t>(n)}};
    BENCH_CHECK_OK(b.Forward({&in, 1}, done + n == context ? logits.data() : nullptr));
  }
  const double prefill_s = Seconds(t0, Clock::now());
  for (int64_t i = 0; i < c.vocab; ++i) {
    if (!std::isfinite(logits[i])) {
      std::fprintf(stderr, "non-finite logit %lld after prefill\n", static_cast<long long>(i));
      return 1;
    }
  }
  const double linear_params =
      static_cast<double>(layers) * (c.hidden * (c.q_dim() + 2 * c.kv_dim()) +
                                     c.q_dim() * c.hidden + 3.0 * c.hidden * c.intermediate);
  const double linear_flops = 2.0 * linear_params * context + 2.0 * c.hidden * c.vocab;
  // Causal attention: QK^T and PV, 2 FLOPs per multiply-add, (T^2 / 2) pairs per head.
  const double attn_flops =
      static_cast<double>(layers) * c.q_heads * c.head_dim * 2.0 * double(context) * context;
  const double prefill_tflops = (linear_flops + attn_flops) / prefill_s / 1e12;
  std::printf(
      "\nprefill %lld tokens in chunks of %lld: %.3f s, %.0f tokens/s, %.0f TFLOP/s "
      "(linear %.0f%% + attention %.0f%% of the FLOPs) = %.1f%% of the measured GEMM "
      "rate\n",
      static_cast<long long>(context), static_cast<long long>(chunk), prefill_s,
      context / prefill_s, prefill_tflops, 100 * linear_flops / (linear_flops + attn_flops),
      100 * attn_flops / (linear_flops + attn_flops), 100 * prefill_tflops / gemm_tflops);

  // ---- Decode at batch 1 after the prefill, several ways in turn (each `steps` steps, the
  // sequence growing by `steps` + 3 tokens per way): the streaming Gemv, then the warp-per-row
  // Gemv (the backend's default), each kernel by kernel with the logits copied to the host and
  // replaying CUDA graphs with greedy sampling on the device (ForwardSample: only the token id
  // reaches the host), with programmatic launches (PDL, CudaBackendOptions::programmatic_launch
  // for the GEMVs, programmatic_attention) off and on, and the streaming o projection. Each way's
  // floor is taken at its own mean sequence length.
  struct Way {
    const char* name;
    bool streaming_gemv, pdl, graphs, sample, attention_pdl, streaming_o;
    double ms = 0, floor_ms = 0;
  };
  // Fields: streaming Gemv, GEMV PDL, graphs, greedy on device, attention PDL, streaming o proj.
  // The last way is the backend's default configuration (the summary line).
  std::vector<Way> ways = {
      {"streaming Gemv, graph, greedy, PDL", true, true, true, true, true, true},
      {"eager, logits to host, no PDL", false, false, false, false, false, true},
      {"eager, logits to host, PDL", false, true, false, false, true, true},
      {"graph, greedy on device, no PDL", false, false, true, true, false, true},
      {"graph, greedy, GEMV PDL only", false, true, true, true, false, true},
      {"graph, greedy, PDL, warp-per-row o", false, true, true, true, true, false},
      {"graph, greedy on device, PDL", false, true, true, true, true, true}};
  int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + c.vocab) -
                                      logits.begin());
  const sqz::TokenSampling greedy;                            // temperature 0
  const double weight_read = b.weight_bytes() - embed_bytes;  // one embedding row per step
  auto floor_at = [&](double kv_len) {
    const double kv_bytes = static_cast<double>(layers) * kv_len * c.kv_dim() * 2 * 2;
    return (weight_read + kv_bytes) / (bw * 1e9) * 1e3;
  };
  int64_t seq_len = context;
  for (Way& way : ways) {
    b.set_streaming_gemv(way.streaming_gemv);
    b.set_programmatic_launch(way.pdl);
    b.set_programmatic_attention(way.attention_pdl);
    b.set_streaming_o_proj(way.streaming_o);
    b.set_cuda_graphs(way.graphs);
    std::vector<double> step_ms;
    way.floor_ms = floor_at(static_cast<double>(seq_len) + 1.5 + 0.5 * (steps + 3));
    for (int64_t s = 0; s < steps + 3; ++s) {
      sqz::StepInput in{seq, {&next, 1}};
      const auto a = Clock::now();
      if (way.sample) {
        BENCH_CHECK_OK(b.ForwardSample({&in, 1}, {&greedy, 1}, &next));
      } else {
        BENCH_CHECK_OK(b.Forward({&in, 1}, logits.data()));
        next = static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + c.vocab) -
                                    logits.begin());
      }
      const double ms = Seconds(a, Clock::now()) * 1e3;
      if (s >= 3) step_ms.push_back(ms);  // first steps: cuBLASLt plans, graph capture
      ++seq_len;
    }
    way.ms = Median(step_ms);
  }
  const double decode_ms = ways.back().ms;
  const double floor_ms = ways.back().floor_ms;
  std::printf(
      "decode batch 1 at %lld cached tokens: floor %.3f ms = (weights %.2f GB + KV) / %.0f GB/s "
      "(KV %.2f GB at %lld tokens); graphs captured %lld, replayed %lld%s%s\n",
      static_cast<long long>(context), floor_ms, weight_read / 1e9, bw,
      static_cast<double>(layers) * context * c.kv_dim() * 4 / 1e9, static_cast<long long>(context),
      static_cast<long long>(b.graph_stats().captured),
      static_cast<long long>(b.graph_stats().replays),
      b.graph_stats().capture_error.empty() ? "" : "; capture failed: ",
      b.graph_stats().capture_error.c_str());
  for (const Way& way : ways) {
    std::printf(
        "  %-38s median %.3f ms/step (%.1f tokens/s), floor %.3f ms, measured / floor = %.3f\n",
        way.name, way.ms, 1e3 / way.ms, way.floor_ms, way.ms / way.floor_ms);
  }
  b.set_streaming_gemv(sqz::CudaBackendOptions{}.streaming_gemv);
  b.set_programmatic_launch(sqz::CudaBackendOptions{}.programmatic_launch);
  b.set_programmatic_attention(sqz::CudaBackendOptions{}.programmatic_attention);
  b.set_streaming_o_proj(sqz::CudaBackendOptions{}.streaming_o_proj);
  BENCH_CHECK_OK(b.FreeSequence(seq));

  // ---- Decode throughput at batch `batch`.
  if (batch > 0) {
    std::vector<sqz::SeqId> seqs;
    std::vector<std::vector<int32_t>> prompts;
    for (int64_t i = 0; i < batch; ++i) {
      seqs.push_back(b.AddSequence().value());
      prompts.push_back(RandomTokens(batch_prompt, c.vocab, 100 + i));
    }
    const auto p0 = Clock::now();
    const int64_t per_step = std::max<int64_t>(1, chunk / batch_prompt);
    for (int64_t i = 0; i < batch; i += per_step) {
      std::vector<sqz::StepInput> ins;
      for (int64_t j = i; j < std::min(batch, i + per_step); ++j) {
        ins.push_back({seqs[j], prompts[j]});
      }
      BENCH_CHECK_OK(b.Forward(ins, logits.data()));
    }
    const double batch_prefill_s = Seconds(p0, Clock::now());
    std::vector<int32_t> toks(batch);
    for (int64_t i = 0; i < batch; ++i) toks[i] = static_cast<int32_t>((7 * i) % c.vocab);
    std::vector<double> ms;
    for (int64_t s = 0; s < steps + 3; ++s) {
      std::vector<sqz::StepInput> ins;
      for (int64_t i = 0; i < batch; ++i) ins.push_back({seqs[i], {&toks[i], 1}});
      const auto a = Clock::now();
      BENCH_CHECK_OK(b.Forward(ins, logits.data()));
      if (s >= 3) ms.push_back(Seconds(a, Clock::now()) * 1e3);
      for (int64_t i = 0; i < batch; ++i) {
        toks[i] = static_cast<int32_t>(
            std::max_element(logits.begin() + i * c.vocab, logits.begin() + (i + 1) * c.vocab) -
            (logits.begin() + i * c.vocab));
      }
    }
    const double bms = Median(ms);
    std::vector<sqz::TokenSampling> greedy_rows(batch);
    std::vector<double> ms_sample;
    for (int64_t s = 0; s < steps + 3; ++s) {
      std::vector<sqz::StepInput> ins;
      for (int64_t i = 0; i < batch; ++i) ins.push_back({seqs[i], {&toks[i], 1}});
      const auto a = Clock::now();
      BENCH_CHECK_OK(b.ForwardSample(ins, greedy_rows, toks.data()));
      if (s >= 3) ms_sample.push_back(Seconds(a, Clock::now()) * 1e3);
    }
    const double bms_sample = Median(ms_sample);
    const double bkv =
        static_cast<double>(layers) * batch * (batch_prompt + steps) * c.kv_dim() * 2 * 2;
    const double bfloor = (weight_read + bkv) / (bw * 1e9) * 1e3;
    std::printf(
        "decode batch %lld (prompts of %lld, prefilled in %.2f s): median %.3f ms/step, "
        "%.0f tokens/s (logits to host); %.3f ms/step, %.0f tokens/s (greedy on device); floor "
        "%.3f ms, measured / floor = %.3f / %.3f\n",
        static_cast<long long>(batch), static_cast<long long>(batch_prompt), batch_prefill_s, bms,
        batch * 1e3 / bms, bms_sample, batch * 1e3 / bms_sample, bfloor, bms / bfloor,
        bms_sample / bfloor);
  }
  std::printf(
      "\nsummary: layers %lld | prefill %.0f tok/s (%.1f%% of GEMM rate) | decode b1 "
      "%.3f ms (%.3fx floor; old Gemv %.3f ms, %.3fx) | its linear layers at m = 1: new %.3f ms in "
      "runs (old %.3f)\n",
      static_cast<long long>(layers), context / prefill_s, 100 * prefill_tflops / gemm_tflops,
      decode_ms, decode_ms / floor_ms, ways[1].ms, ways[1].ms / ways[1].floor_ms, linear_ms[3],
      linear_ms[2]);
  return 0;
}
