// End-to-end Squeezed Attention on the GPU (issue 9, item 4): an 8B-shaped model with random
// weights made on the device (CudaBackend::CreateRandom) serves a registered long context, DENSE
// against SQUEEZED (KV budget 0.125), in one process:
//   1. ingestion on the device: dense chunked prefill of the context through the backend (the
//      window's queries captured), its K/V gathered out of the paged pool (CopyKvToDevice),
//      IngestContext (k-means of every (layer, kv head), cluster-ordered re-layout, coarse level,
//      calibration) writing straight into a DeviceContext, installed as a resident context;
//   2. a check that SQUEEZED at budget 1.0 gives DENSE's logits;
//   3. decode at batch 1 (ms/token) and batch 32 (tokens/s): every request has a 16-token prompt
//      after the context, then greedy decode steps (ForwardSample), DENSE and SQUEEZED timed over
//      the same steps, each with decode steps replayed as CUDA graphs (up to --graph-max-batch
//      sequences) and, for comparison, launched eagerly; the ratio squeezed/dense (graphs on)
//      against the goals (1.7x at batch 1, 3x at batch 32), and each mode's memory floor (weights
//      + context bytes it must read, over the device-to-device copy bandwidth measured here);
//      SQZ(1.0) (the lookup, then every row) against DENSE shows what the lookup itself costs;
//      "SQZ ungrp" (batch > 1): SQUEEZED with one lookup per request instead of one per run of
//      requests over the shared context (CudaBackendOptions::group_context_lookups off);
//   4. prompt prefill after the context at batch 1 (--prefill-prompts tokens each): DENSE, DENSE
//      with its context part in one launch (context_prefill_kv_splits 1: no key splits, the
//      previous path), and SQUEEZED with the context attended densely and with the sparse prefill
//      (a selection per block of query tokens, CudaBackendOptions::sparse_prefill; one row per
//      --prefill-blocks size, AttentionOptions::block_size: 1 is a selection per query token), with
//      the last position's logits against DENSE's.
// A program, not a test. Usage (flags with defaults):
//   sqz_cuda_e2e_bench [--layers 32] [--context 131072] [--chunk 4096] [--budget-permille 125]
//                      [--batches 1,32] [--prompt 16] [--warmup 4] [--steps 32]
//                      [--graph-max-batch 32] [--eager 1 (0: skip the eager rows)]
//                      [--prefill-prompts 256,1024 (empty: none)] [--prefill-reps 3]
//                      [--prefill-blocks 64 (query-block sizes of the sparse prefill rows)]
//                      [--programmatic 1 (0: plain launches of the GEMVs, no PDL)]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench/common/cuda_bench_util.h"
#include "bench/common/model_shapes.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/squeeze/index_builder.h"
#include "engine/squeeze/squeezed_attention.h"
#include "engine/squeeze_gpu/gpu_index_builder.h"
#include "kernels/cuda/squeeze_ingest.h"

namespace {

using sqz::bench::IntArg;
using sqz::bench::Llama3_8B;
using sqz::bench::Median;
using sqz::bench::RandomTokens;

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

[[noreturn]] void Die(const std::string& what, const sqz::Status& s) {
  std::fprintf(stderr, "FAILED: %s: %s\n", what.c_str(), s.ToString().c_str());
  std::exit(1);
}
#define CHECK_OK(expr, what)         \
  do {                               \
    const ::sqz::Status s_ = (expr); \
    if (!s_.ok()) Die(what, s_);     \
  } while (0)

std::vector<int64_t> ListArg(int argc, char** argv, const char* name, std::vector<int64_t> def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) != 0) continue;
    std::vector<int64_t> out;
    std::stringstream ss(argv[i + 1]);
    std::string item;
    while (std::getline(ss, item, ',')) out.push_back(std::atoll(item.c_str()));
    return out;
  }
  return def;
}

// Device-to-device copy bandwidth, GB/s (read + write bytes counted once each, as a copy moves
// them), over a 1 GiB buffer.
double CopyBandwidth(cudaStream_t stream) {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return 0.0;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream);
  cudaEventRecord(e0, stream);
  for (int i = 0; i < 10; ++i) cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream);
  cudaEventRecord(e1, stream);
  cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return 10.0 * 2.0 * bytes / (ms * 1e-3) / 1e9;
}

struct Ingested {
  sqz::ContextSnapshot snapshot;  // dims, options, thresholds (no host KV: it lives on the device)
  double prefill_ms = 0, gather_ms = 0, ingest_ms = 0, install_ms = 0;
  sqz::cuda::IngestTimings timings;
};

// Fills *result and installs the device copy as the resident context of result->snapshot (whose
// address the backend then keys it by: *result must not move).
void IngestOnDevice(sqz::CudaBackend& b, int64_t n, int64_t chunk, Ingested* result) {
  const sqz::ModelConfig& c = b.config();
  sqz::SqueezeOptions o;  // defaults: sink 4, window 100, 5% centroids, 1% coarse, 20 iterations
  Ingested& r = *result;
  const int64_t sink = sqz::SinkLength(n, o), window = sqz::WindowLength(n, o);
  const int64_t body = n - sink - window;
  // 1. Dense prefill; the last chunk is exactly the window so its queries are captured.
  const std::vector<int32_t> tokens = RandomTokens(n, c.vocab, 7);
  auto seq = b.AddSequence();
  CHECK_OK(seq.status(), "AddSequence");
  std::vector<float> window_q(static_cast<size_t>(c.layers) * window * c.q_dim());
  const auto t0 = Clock::now();
  for (int64_t done = 0; done < n;) {
    const int64_t left = n - done - window;
    const int64_t take = left > 0 ? std::min(chunk, left) : window;
    sqz::StepInput in;
    in.seq = *seq;
    in.tokens = std::span<const int32_t>(tokens.data() + done, take);
    if (left <= 0) in.q_out = window_q.data();
    std::vector<sqz::StepInput> batch = {in};
    CHECK_OK(b.Forward(batch, nullptr), "context prefill at " + std::to_string(done));
    done += take;
  }
  const auto t1 = Clock::now();
  r.prefill_ms = Ms(t0, t1);
  // 2. K/V out of the pool: [layers][n][kv_heads][d] bf16.
  const size_t per_layer = static_cast<size_t>(n) * c.kv_dim();
  auto keys = sqz::DeviceMemory::Allocate(2 * per_layer * c.layers * 2, "captured K/V");
  CHECK_OK(keys.status(), "allocate captured K/V");
  char* k_in = keys->get<char>();
  char* v_in = k_in + per_layer * c.layers * 2;
  for (int layer = 0; layer < c.layers; ++layer) {
    CHECK_OK(b.CopyKvToDevice(*seq, layer, 0, n, k_in + layer * per_layer * 2,
                              v_in + layer * per_layer * 2),
             "CopyKvToDevice");
  }
  CHECK_OK(b.FreeSequence(*seq), "FreeSequence");
  const auto t2 = Clock::now();
  r.gather_ms = Ms(t1, t2);
  // 3. IngestContext straight into the device copy's buffers.
  sqz::cuda::IngestShape shape;
  shape.layers = static_cast<int32_t>(c.layers);
  shape.kv_heads = static_cast<int32_t>(c.kv_heads);
  shape.q_heads = static_cast<int32_t>(c.q_heads);
  shape.head_dim = static_cast<int32_t>(c.head_dim);
  shape.n_tokens = n;
  shape.sink_len = sink;
  shape.window_len = window;
  shape.k = sqz::FineClusters(body, o);
  shape.k1 = sqz::CoarseClusters(body, o);
  sqz::DeviceContextShape ds;
  ds.layers = shape.layers;
  ds.kv_heads = shape.kv_heads;
  ds.head_dim = shape.head_dim;
  ds.n_tokens = n;
  ds.sink_len = sink;
  ds.window_len = window;
  ds.k = shape.k;
  ds.k1 = shape.k1;
  ds.kv_elem_bytes = 2;
  auto dc = sqz::DeviceContext::Allocate(ds);
  CHECK_OK(dc.status(), "DeviceContext::Allocate");
  auto ws_bytes = sqz::cuda::IngestWorkspaceBytes(shape);
  CHECK_OK(ws_bytes.status(), "IngestWorkspaceBytes");
  const int64_t heads = ds.heads(), d = c.head_dim;
  const size_t hist =
      static_cast<size_t>(sqz::kNumGqaReduce) * c.layers * sqz::cuda::kCalibrationBins;
  const size_t temp_bytes =
      4 * (heads * body + heads * shape.k * d + heads * shape.k1 * d) + 8 * hist + 4096;
  auto temp = sqz::DeviceMemory::Allocate(temp_bytes + *ws_bytes + 1024, "ingestion temporaries");
  CHECK_OK(temp.status(), "allocate ingestion temporaries");
  auto wq = sqz::DeviceMemory::Allocate(window_q.size() * 4, "window queries");
  CHECK_OK(wq.status(), "allocate window queries");
  CHECK_OK(sqz::cuda::CudaStatus(
               cudaMemcpy(wq->get(), window_q.data(), window_q.size() * 4, cudaMemcpyHostToDevice),
               "window queries"),
           "upload window queries");
  char* t = temp->get<char>();
  auto take = [&](size_t bytes) {
    char* p = t;
    t += (bytes + 255) / 256 * 256;
    return p;
  };
  sqz::cuda::IngestOutputs out;
  out.k_out = (*dc)->k();
  out.v_out = (*dc)->v();
  out.positions = reinterpret_cast<int32_t*>(take(4 * heads * body));
  out.centroids = reinterpret_cast<float*>(take(4 * heads * shape.k * d));
  out.counts = (*dc)->counts();
  out.offsets = (*dc)->offsets();
  out.centroids_bf16 = (*dc)->centroids();
  if (shape.k1 > 0) {
    out.coarse_centroids = reinterpret_cast<float*>(take(4 * heads * shape.k1 * d));
    out.coarse_offsets = (*dc)->coarse_offsets();
    out.coarse_members = (*dc)->coarse_members();
    out.coarse_centroids_bf16 = (*dc)->coarse_centroids();
  }
  out.histogram = reinterpret_cast<uint64_t*>(take(8 * hist));
  void* workspace = take(*ws_bytes);
  sqz::cuda::KMeansParams params;
  params.max_iterations = o.kmeans_iterations;
  params.tolerance = o.kmeans_tolerance;
  params.seed = o.kmeans_seed;
  const auto t3 = Clock::now();
  CHECK_OK(
      sqz::cuda::IngestContext(shape, params, k_in, v_in, sqz::cuda::PointType::kBf16,
                               wq->get<float>(), out, workspace, *ws_bytes, b.stream(), &r.timings),
      "IngestContext");
  CHECK_OK(sqz::cuda::CudaStatus(cudaStreamSynchronize(b.stream()), "ingest"), "ingest");
  const auto t4 = Clock::now();
  r.ingest_ms = Ms(t3, t4);
  std::vector<uint64_t> histogram(hist);
  CHECK_OK(sqz::cuda::CudaStatus(
               cudaMemcpy(histogram.data(), out.histogram, hist * 8, cudaMemcpyDeviceToHost),
               "histogram"),
           "histogram");
  r.snapshot.options = o;
  r.snapshot.dims = {.layers = shape.layers,
                     .kv_heads = shape.kv_heads,
                     .q_heads = shape.q_heads,
                     .head_dim = shape.head_dim,
                     .n_tokens = n,
                     .sink_len = sink,
                     .window_len = window,
                     .body_len = body};
  sqz::ThresholdsFromHistograms(histogram, window, &r.snapshot);
  CHECK_OK(b.InstallContext(r.snapshot, std::move(*dc)), "InstallContext");
  r.install_ms = Ms(t4, Clock::now());
}

struct Run {
  double ms_per_step = 0;
  double tokens_per_s = 0;
  int64_t replays = 0;  // of the timed steps, replayed as CUDA graphs
};

Run Decode(sqz::CudaBackend& b, const sqz::ContextAttention* ctx, int64_t batch, int64_t prompt,
           int64_t warmup, int64_t steps) {
  const sqz::ModelConfig& c = b.config();
  std::vector<sqz::SeqId> seqs;
  std::vector<std::vector<int32_t>> prompts, generated(batch);
  for (int64_t i = 0; i < batch; ++i) {
    auto s = b.AddSequence();
    CHECK_OK(s.status(), "AddSequence");
    seqs.push_back(*s);
    prompts.push_back(RandomTokens(prompt, c.vocab, 1000 + static_cast<uint32_t>(i)));
  }
  std::vector<sqz::TokenSampling> sampling(batch);  // greedy
  std::vector<int32_t> next(batch);
  std::vector<sqz::StepInput> in(batch);
  for (int64_t i = 0; i < batch; ++i) in[i] = {seqs[i], prompts[i], ctx};
  CHECK_OK(b.ForwardSample(in, sampling, next.data()), "prompt prefill");
  Clock::time_point t0;
  int64_t replays0 = 0;
  for (int64_t s = 0; s < warmup + steps; ++s) {
    if (s == warmup) {
      t0 = Clock::now();
      replays0 = b.graph_stats().replays;
    }
    for (int64_t i = 0; i < batch; ++i) in[i] = {seqs[i], {&next[i], 1}, ctx};
    std::vector<int32_t> out(batch);
    CHECK_OK(b.ForwardSample(in, sampling, out.data()), "decode step");
    next = out;
  }
  const double ms = Ms(t0, Clock::now());
  const int64_t replays = b.graph_stats().replays - replays0;
  for (sqz::SeqId s : seqs) CHECK_OK(b.FreeSequence(s), "FreeSequence");
  Run r;
  r.replays = replays;
  r.ms_per_step = ms / steps;
  r.tokens_per_s = 1e3 * batch * steps / ms;
  return r;
}

// Prefill of one request's n-token prompt after the context under `ctx`: the median wall time of
// `reps` prefills (after one untimed run that grows the buffers) and the last position's logits.
struct PrefillRun {
  double ms = 0;
  std::vector<float> logits;
};

PrefillRun Prefill(sqz::CudaBackend& b, const sqz::ContextAttention* ctx, int64_t n, int reps) {
  const auto prompt = RandomTokens(n, b.config().vocab, 4242);
  PrefillRun r;
  r.logits.resize(b.config().vocab);
  std::vector<double> ms;
  for (int i = 0; i <= reps; ++i) {
    auto s = b.AddSequence();
    CHECK_OK(s.status(), "AddSequence");
    std::vector<sqz::StepInput> in = {{*s, prompt, ctx}};
    cudaStreamSynchronize(b.stream());
    const auto t0 = Clock::now();
    CHECK_OK(b.Forward(in, r.logits.data()), "prompt prefill");  // returns with the logits
    if (i > 0) ms.push_back(Ms(t0, Clock::now()));
    CHECK_OK(b.FreeSequence(*s), "FreeSequence");
  }
  r.ms = Median(ms);
  return r;
}

double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Logits of one 16-token prompt after the context under `ctx`, then of one decode step.
std::vector<float> OneDecode(sqz::CudaBackend& b, const sqz::ContextAttention* prefill_ctx,
                             const sqz::ContextAttention* decode_ctx) {
  const int64_t vocab = b.config().vocab;
  auto s = b.AddSequence();
  CHECK_OK(s.status(), "AddSequence");
  const auto prompt = RandomTokens(16, vocab, 99);
  std::vector<float> logits(vocab);
  std::vector<sqz::StepInput> in = {{*s, prompt, prefill_ctx}};
  CHECK_OK(b.Forward(in, logits.data()), "check prefill");
  const int32_t next = 5;
  in = {{*s, {&next, 1}, decode_ctx}};
  CHECK_OK(b.Forward(in, logits.data()), "check decode");
  CHECK_OK(b.FreeSequence(*s), "FreeSequence");
  return logits;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t layers = IntArg(argc, argv, "--layers", 32);
  const int64_t context = IntArg(argc, argv, "--context", 131072);
  const int64_t chunk = IntArg(argc, argv, "--chunk", 4096);
  const double budget = IntArg(argc, argv, "--budget-permille", 125) / 1000.0;
  const std::vector<int64_t> batches = ListArg(argc, argv, "--batches", {1, 32});
  const int64_t prompt = IntArg(argc, argv, "--prompt", 16);
  const int64_t warmup = IntArg(argc, argv, "--warmup", 4);
  const int64_t steps = IntArg(argc, argv, "--steps", 32);
  const int64_t graph_max_batch = IntArg(argc, argv, "--graph-max-batch", 32);
  const bool eager_rows = IntArg(argc, argv, "--eager", 1) != 0;
  const std::vector<int64_t> prefill_prompts =
      ListArg(argc, argv, "--prefill-prompts", {256, 1024});
  const int prefill_reps = static_cast<int>(IntArg(argc, argv, "--prefill-reps", 3));
  const std::vector<int64_t> prefill_blocks = ListArg(argc, argv, "--prefill-blocks", {64});
  for (int64_t blk : prefill_blocks) {
    if (blk < 1) {
      std::fprintf(stderr, "--prefill-blocks: sizes must be >= 1, got %lld\n",
                   static_cast<long long>(blk));
      return 2;
    }
  }
  const int64_t longest_prompt = std::max<int64_t>(
      prompt, prefill_prompts.empty()
                  ? 0
                  : *std::max_element(prefill_prompts.begin(), prefill_prompts.end()));
  const int64_t max_batch = *std::max_element(batches.begin(), batches.end());

  const sqz::ModelConfig c =
      Llama3_8B(layers, context + std::max(prompt + warmup + steps, longest_prompt) + 1024);
  sqz::CudaBackendOptions o;
  o.dtype = sqz::CudaDType::kBf16;
  // The ingestion prefill holds the whole context in the pool; requests need a few blocks each.
  o.kv_blocks = (context + max_batch * (prompt + warmup + steps + 32) + longest_prompt) /
                    sqz::kKvBlockTokens +
                64;
  o.max_step_tokens = std::max({chunk, max_batch * prompt, longest_prompt});
  o.decode_workspace_bytes = int64_t{256} << 20;
  o.cuda_graphs = true;
  o.graph_max_batch = graph_max_batch;
  o.programmatic_launch = IntArg(argc, argv, "--programmatic", 1) != 0;
  // Room for the one context (bf16 K/V + index), with margin.
  const int64_t ctx_bytes = 2 * layers * c.kv_heads * context * c.head_dim * 2;
  o.context_budget_bytes = ctx_bytes + ctx_bytes / 8 + (int64_t{256} << 20);
  auto backend = sqz::CudaBackend::CreateRandom(c, o, 1234);
  CHECK_OK(backend.status(), "CreateRandom");
  sqz::CudaBackend& b = **backend;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const double bw = CopyBandwidth(b.stream());
  std::printf("device %s, %d SMs; copy bandwidth %.0f GB/s; programmatic launches %s\n", prop.name,
              prop.multiProcessorCount, bw, o.programmatic_launch ? "on" : "off");
  std::printf(
      "model: Llama-3-8B shape, %lld layers, random bf16 weights (%.2f GB); context %lld "
      "tokens (%.2f GB of bf16 K/V); KV budget %.3f\n",
      static_cast<long long>(layers), b.weight_bytes() / 1e9, static_cast<long long>(context),
      ctx_bytes / 1e9, budget);

  auto ingested = std::make_unique<Ingested>();
  Ingested& ing = *ingested;
  IngestOnDevice(b, context, chunk, &ing);
  std::printf(
      "ingestion: prefill %.0f ms (%.0f tok/s), K/V gather %.0f ms, clustering + re-layout "
      "+ coarse + calibration %.0f ms (k-means %.0f, relayout %.0f, coarse %.0f, "
      "calibrate %.0f)\n",
      ing.prefill_ms, 1e3 * context / ing.prefill_ms, ing.gather_ms, ing.ingest_ms,
      ing.timings.normalize_seed_cluster_ms, ing.timings.relayout_ms, ing.timings.coarse_ms,
      ing.timings.calibrate_ms);
  std::fflush(stdout);

  sqz::AttentionOptions dense_o, full_o, sq_o;
  dense_o.mode = sqz::AttentionMode::kDense;
  full_o.kv_budget = 1.0;
  sq_o.kv_budget = budget;
  auto dense = sqz::MakeContextAttention(ing.snapshot, dense_o);
  auto full = sqz::MakeContextAttention(ing.snapshot, full_o);
  auto squeezed = sqz::MakeContextAttention(ing.snapshot, sq_o);
  CHECK_OK(dense.status(), "dense attention");
  CHECK_OK(full.status(), "budget-1 attention");
  CHECK_OK(squeezed.status(), "squeezed attention");
  // The sparse prefill at each --prefill-blocks size (the default 64 is `squeezed` itself).
  std::vector<std::unique_ptr<sqz::SnapshotAttention>> by_block;
  for (int64_t blk : prefill_blocks) {
    sqz::AttentionOptions bo = sq_o;
    bo.block_size = blk;
    auto a = sqz::MakeContextAttention(ing.snapshot, bo);
    CHECK_OK(a.status(), "squeezed attention, prefill block " + std::to_string(blk));
    by_block.push_back(std::move(*a));
  }

  // Check: SQUEEZED at budget 1 reads every row (the same rows in the same order as DENSE).
  const auto l_dense = OneDecode(b, dense->get(), dense->get());
  const auto l_full = OneDecode(b, dense->get(), full->get());
  const auto l_sq = OneDecode(b, dense->get(), squeezed->get());
  const double e_full = RelL2(l_full, l_dense), e_sq = RelL2(l_sq, l_dense);
  std::printf(
      "check: decode logits relative L2 to DENSE: SQUEEZED(1.0) %.2e (want < 1e-2), "
      "SQUEEZED(%.3f) %.2e\n",
      e_full, budget, e_sq);

  // Bytes a decode step must read: the weights once, plus per request its context part.
  const sqz::SnapshotDims& dm = ing.snapshot.dims;
  const double token_bytes = 2.0 * layers * c.kv_heads * c.head_dim * 2;  // K and V, bf16
  const double dense_ctx = token_bytes * dm.n_tokens;
  const double k_fine = static_cast<double>(sqz::FineClusters(dm.body_len, ing.snapshot.options));
  const double sq_ctx = token_bytes * (dm.sink_len + dm.window_len + budget * dm.body_len) +
                        layers * c.kv_heads * k_fine * c.head_dim * 2;  // + bf16 centroids
  const double wbytes = static_cast<double>(b.weight_bytes());
  std::printf("\n%-6s %-10s %-7s %12s %12s %12s %10s %8s\n", "batch", "mode", "launch", "ms/step",
              "tokens/s", "floor ms", "of floor", "replays");
  int failures = e_full < 1e-2 ? 0 : 1;
  auto row = [&](int64_t batch, const char* mode, const char* launch, const Run& r, double floor) {
    std::printf("%-6lld %-10s %-7s %12.3f %12.1f %12.3f %9.2fx %5lld/%lld\n",
                static_cast<long long>(batch), mode, launch, r.ms_per_step, r.tokens_per_s, floor,
                r.ms_per_step / floor, static_cast<long long>(r.replays),
                static_cast<long long>(steps));
  };
  for (int64_t batch : batches) {
    const double fd = (wbytes + batch * dense_ctx) / (bw * 1e9) * 1e3;
    const double fs = (wbytes + batch * sq_ctx) / (bw * 1e9) * 1e3;
    if (eager_rows) {
      b.set_cuda_graphs(false);
      row(batch, "DENSE", "eager", Decode(b, dense->get(), batch, prompt, warmup, steps), fd);
      row(batch, "SQUEEZED", "eager", Decode(b, squeezed->get(), batch, prompt, warmup, steps), fs);
      b.set_cuda_graphs(true);
    }
    const Run rd = Decode(b, dense->get(), batch, prompt, warmup, steps);
    const Run rs = Decode(b, squeezed->get(), batch, prompt, warmup, steps);
    row(batch, "DENSE", "graphs", rd, fd);
    row(batch, "SQUEEZED", "graphs", rs, fs);
    // The lookup's own cost: budget 1.0 runs it and then reads every row, as DENSE does.
    row(batch, "SQZ(1.0)", "graphs", Decode(b, full->get(), batch, prompt, warmup, steps), fd);
    if (batch > 1) {
      // One lookup per request instead of one per run of requests over the shared context
      // (group_context_lookups off; SQUEEZED runs with the default, on).
      b.set_group_context_lookups(false);
      row(batch, "SQZ ungrp", "graphs", Decode(b, squeezed->get(), batch, prompt, warmup, steps),
          fs);
      b.set_group_context_lookups(true);
    }
    const double goal = batch == 1 ? 1.7 : 3.0;
    const double speedup = rd.ms_per_step / rs.ms_per_step;
    std::printf("%-6lld speedup squeezed / dense %.2fx (goal %.1fx: %s)\n",
                static_cast<long long>(batch), speedup, goal, speedup >= goal ? "met" : "MISSED");
    std::fflush(stdout);
  }
  if (!prefill_prompts.empty()) {
    std::printf("\n%-8s %-28s %10s %12s %10s %14s\n", "prompt", "mode", "ms", "tokens/s", "x dense",
                "logits vs DENSE");
  }
  for (int64_t n : prefill_prompts) {
    b.set_sparse_prefill(false);
    const PrefillRun pd = Prefill(b, dense->get(), n, prefill_reps);
    b.set_context_prefill_kv_splits(1);
    const PrefillRun pu = Prefill(b, dense->get(), n, prefill_reps);
    b.set_context_prefill_kv_splits(0);
    const PrefillRun pq = Prefill(b, squeezed->get(), n, prefill_reps);
    b.set_sparse_prefill(true);
    std::vector<PrefillRun> ps;
    for (const auto& a : by_block) ps.push_back(Prefill(b, a.get(), n, prefill_reps));
    const PrefillRun pf = Prefill(b, full->get(), n, prefill_reps);
    b.set_sparse_prefill(false);
    auto prow = [&](const char* mode, const PrefillRun& r) {
      std::printf("%-8lld %-28s %10.2f %12.0f %9.2fx %14.2e\n", static_cast<long long>(n), mode,
                  r.ms, 1e3 * n / r.ms, pd.ms / r.ms, RelL2(r.logits, pd.logits));
    };
    prow("DENSE", pd);
    prow("DENSE, no context key splits", pu);
    prow("SQUEEZED, dense prefill", pq);
    for (size_t i = 0; i < ps.size(); ++i) {
      const std::string label = "SQUEEZED, sparse, block " + std::to_string(prefill_blocks[i]);
      prow(label.c_str(), ps[i]);
    }
    prow("SQZ(1.0), sparse prefill", pf);
    // Budget 1 selects every cluster of every block: the same keys as DENSE through another kernel
    // (its own key splits and merge), so the same logits up to bf16 rounding, which 32 layers of
    // random weights amplify: 1.5e-2 - 1.6e-2 measured on the H200, against 1.2e-1 at budget
    // 0.125 (the kernels themselves agree within 5e-3: kernels/cuda/sparse_prefill_attention_test).
    if (!(RelL2(pf.logits, pd.logits) < 5e-2)) {
      std::printf("FAILED: sparse prefill at budget 1 differs from DENSE\n");
      failures += 1;
    }
    // Key splits change only the order of the context's softmax sums: bf16 rounding, amplified
    // by the random layers as above.
    if (!(RelL2(pu.logits, pd.logits) < 5e-2)) {
      std::printf("FAILED: DENSE prefill with and without context key splits differ\n");
      failures += 1;
    }
    std::fflush(stdout);
  }
  const sqz::CudaBackend::GraphStats gs = b.graph_stats();
  std::printf("\nCUDA graphs: %lld captured, %lld replays%s%s\n",
              static_cast<long long>(gs.captured), static_cast<long long>(gs.replays),
              gs.capture_error.empty() ? "" : "; capture error: ", gs.capture_error.c_str());
  const auto cs = b.context_stats();
  std::printf("\ncontexts resident %lld (%.2f GB of %.2f GB budget), uploads %lld\n",
              static_cast<long long>(cs.resident), cs.used_bytes / 1e9, cs.budget_bytes / 1e9,
              static_cast<long long>(cs.uploads));
  return failures;
}
