// CudaBackend's decode-step CUDA graphs, device sampling (ForwardSample) and what bf16 batch
// invariance does and does not hold (cuda_backend.h states the claims tested here). Needs a CUDA
// device: without one every case WARNs "skipped: ..." and passes.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/cuda/cuda_backend.h"
#include "engine/model/hf_writer.h"
#include "engine/model/sampler.h"
#include "kernels/cuda/test_util.h"

namespace sqz {
namespace {

double RelL2(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(a[i])) return INFINITY;
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// head_dim 64 / 128 take the tensor-core decode kernel and the GEMV (bf16), as real models do.
Model TestModel(int64_t head_dim, uint64_t seed) {
  ModelConfig c;
  c.hidden = 256;
  c.intermediate = 344;
  c.layers = 2;
  c.q_heads = 4;
  c.kv_heads = 2;
  c.head_dim = head_dim;
  c.vocab = 1003;
  c.max_positions = 4096;
  c.qkv_bias = true;
  c.rope.llama3_factor = 4.0f;
  c.rope.llama3_original_max_positions = 256;
  return Model(c, RandomWeights(c, seed));
}

std::unique_ptr<CudaBackend> Make(const Model& m, CudaDType dtype, bool graphs,
                                  int64_t graph_max_batch = 16) {
  CudaBackendOptions o;
  o.dtype = dtype;
  o.kv_blocks = 1024;
  o.max_step_tokens = 4096;  // the batch-invariance case prefills 20 prompts in one step
  o.max_logit_rows = 64;
  o.cuda_graphs = graphs;
  o.graph_max_batch = graph_max_batch;
  auto b = CudaBackend::Create(m, o);
  INFO(b.status().ToString());
  REQUIRE(b.ok());
  return std::move(b).value();
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, std::mt19937& gen) {
  std::uniform_int_distribution<int32_t> u(0, static_cast<int32_t>(vocab) - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = u(gen);
  return t;
}

// Runs a schedule (prompts of `prompt_lens`, then `steps` decode steps over all sequences with
// seeded tokens) and returns every step's logits, concatenated.
std::vector<float> RunSchedule(CudaBackend& b, const std::vector<int64_t>& prompt_lens, int steps,
                               uint32_t seed) {
  const int64_t vocab = b.config().vocab;
  std::mt19937 gen(seed);
  std::vector<SeqId> seqs;
  std::vector<float> all;
  for (int64_t len : prompt_lens) {
    seqs.push_back(b.AddSequence().value());
    const std::vector<int32_t> t = RandomTokens(len, vocab, gen);
    std::vector<float> logits(vocab);
    StepInput in{seqs.back(), t, nullptr, false, nullptr};
    REQUIRE(b.Forward(std::span<const StepInput>(&in, 1), logits.data()).ok());
    all.insert(all.end(), logits.begin(), logits.end());
  }
  for (int s = 0; s < steps; ++s) {
    const std::vector<int32_t> t = RandomTokens(seqs.size(), vocab, gen);
    std::vector<StepInput> batch;
    for (size_t i = 0; i < seqs.size(); ++i) {
      batch.push_back({seqs[i], std::span<const int32_t>(&t[i], 1), nullptr, false, nullptr});
    }
    std::vector<float> logits(seqs.size() * vocab, NAN);
    const Status st = b.Forward(batch, logits.data());
    INFO("step " << s << ": " << st.ToString());
    REQUIRE(st.ok());
    all.insert(all.end(), logits.begin(), logits.end());
  }
  for (SeqId q : seqs) REQUIRE(b.FreeSequence(q).ok());
  return all;
}

TEST_CASE("CUDA graphs give bit-identical decode logits and are replayed") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  for (CudaDType dtype : {CudaDType::kBf16, CudaDType::kF32}) {
    for (int64_t head_dim : {64, 128}) {
      const Model m = TestModel(head_dim, 3 + head_dim);
      auto eager = Make(m, dtype, false);
      auto graphed = Make(m, dtype, true);
      // Batches of 1, 3 and 17 (above graph_max_batch 16: eager), lengths across key buckets.
      for (const std::vector<int64_t>& prompts :
           {std::vector<int64_t>{1}, std::vector<int64_t>{5, 129, 60},
            std::vector<int64_t>(17, 33)}) {
        const std::vector<float> a = RunSchedule(*eager, prompts, 40, 17);
        const std::vector<float> b = RunSchedule(*graphed, prompts, 40, 17);
        INFO("dtype " << (dtype == CudaDType::kBf16 ? "bf16" : "fp32") << " head_dim " << head_dim
                      << " batch " << prompts.size());
        REQUIRE(a.size() == b.size());
        CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
      }
      CHECK(eager->graph_stats().replays == 0);
      const CudaBackend::GraphStats gs = graphed->graph_stats();
      INFO("captured " << gs.captured << " replays " << gs.replays << " capture error '"
                       << gs.capture_error << "'");
      CHECK(gs.capture_error.empty());
      CHECK(gs.captured >= 2);              // batch 1 and batch 3, at least one bucket each
      CHECK(gs.replays >= 2 * 40 - 2 * 8);  // most small-batch steps after the second one
    }
  }
}

// Programmatic dependent launches of the GEMVs (options.programmatic_launch, the default) and of
// the dense decode attention behind the QKV + RoPE kernel (options.programmatic_attention: its
// first tile of older keys loaded before it waits) change
// when they start, never what they compute: the same bits as plain launches, eager and from graphs,
// prefill and decode, at batch 1 (the GEMV path) and above 8 rows (cuBLASLt in between), over
// sequences shorter and longer than a tile.
TEST_CASE("Programmatic launches give the bits of plain launches") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  for (int64_t head_dim : {64, 128}) {
    const Model m = TestModel(head_dim, 5 + head_dim);
    auto plain = Make(m, CudaDType::kBf16, false);
    plain->set_programmatic_launch(false);
    plain->set_programmatic_attention(false);
    for (bool graphs : {false, true}) {
      auto pdl = Make(m, CudaDType::kBf16, graphs);
      pdl->set_programmatic_launch(true);
      pdl->set_programmatic_attention(true);
      for (const std::vector<int64_t>& prompts :
           {std::vector<int64_t>{1}, std::vector<int64_t>{5, 129, 60},
            std::vector<int64_t>(12, 33)}) {
        INFO("head_dim " << head_dim << " graphs " << graphs << " batch " << prompts.size());
        const std::vector<float> a = RunSchedule(*plain, prompts, 24, 29);
        const std::vector<float> b = RunSchedule(*pdl, prompts, 24, 29);
        REQUIRE(a.size() == b.size());
        CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
      }
      if (graphs) CHECK(pdl->graph_stats().capture_error.empty());
    }
  }
}

TEST_CASE("ForwardSample greedy picks Sampler's token from the same logits, penalties included") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const Model m = TestModel(128, 5);
  const int64_t vocab = m.config.vocab;
  // Twins: one backend returns logits, the other samples; same steps, so the same logits.
  auto logits_backend = Make(m, CudaDType::kBf16, true);
  auto sampling_backend = Make(m, CudaDType::kBf16, true);
  std::mt19937 gen(23);
  const int n = 3;
  std::vector<std::vector<int32_t>> prompts, generated(n);
  std::vector<SeqId> a, b;
  for (int i = 0; i < n; ++i) {
    prompts.push_back(RandomTokens(10 + 40 * i, vocab, gen));
    a.push_back(logits_backend->AddSequence().value());
    b.push_back(sampling_backend->AddSequence().value());
  }
  std::vector<TokenSampling> sampling(n);
  sampling[1].repetition_penalty = 1.3f;
  sampling[2].presence_penalty = 0.7f;
  sampling[2].frequency_penalty = 0.4f;
  std::vector<int32_t> next(n);
  for (int step = 0; step < 24; ++step) {
    std::vector<StepInput> ba, bb;
    for (int i = 0; i < n; ++i) {
      const std::span<const int32_t> t =
          step == 0 ? std::span<const int32_t>(prompts[i]) : std::span<const int32_t>(&next[i], 1);
      ba.push_back({a[i], t, nullptr, false, nullptr});
      bb.push_back({b[i], t, nullptr, false, nullptr});
      sampling[i].prompt = prompts[i];
      sampling[i].generated = generated[i];
    }
    std::vector<float> logits(n * vocab);
    REQUIRE(logits_backend->Forward(ba, logits.data()).ok());
    std::vector<int32_t> tokens(n, -1);
    const Status st = sampling_backend->ForwardSample(bb, sampling, tokens.data());
    INFO("step " << step << ": " << st.ToString());
    REQUIRE(st.ok());
    for (int i = 0; i < n; ++i) {
      SamplingParams p;
      p.temperature = 0.0f;
      p.repetition_penalty = sampling[i].repetition_penalty;
      p.presence_penalty = sampling[i].presence_penalty;
      p.frequency_penalty = sampling[i].frequency_penalty;
      Sampler cpu(p, prompts[i]);
      for (int32_t g : generated[i]) cpu.Accept(g);
      INFO("sequence " << i);
      CHECK(tokens[i] == cpu.Sample(&logits[i * vocab], vocab).token);
      next[i] = tokens[i];
      generated[i].push_back(tokens[i]);
    }
  }
  CHECK(sampling_backend->graph_stats().replays > 0);
  CHECK(sampling_backend->SamplesInBackend());
}

TEST_CASE("ForwardSample draws are reproducible and refusals change nothing") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const Model m = TestModel(64, 9);
  const int64_t vocab = m.config.vocab;
  std::mt19937 gen(31);
  const std::vector<int32_t> prompt = RandomTokens(50, vocab, gen);
  std::vector<std::vector<int32_t>> runs;
  for (int run = 0; run < 2; ++run) {
    auto b = Make(m, CudaDType::kBf16, run == 1);
    const SeqId s = b->AddSequence().value();
    std::vector<int32_t> out;
    int32_t next = 0;
    for (int step = 0; step < 16; ++step) {
      TokenSampling t;
      t.temperature = 0.9f;
      t.top_k = 40;
      t.top_p = 0.95f;
      t.seed = 77;
      t.counter = step;
      const StepInput in{
          s, step == 0 ? std::span<const int32_t>(prompt) : std::span<const int32_t>(&next, 1),
          nullptr, false, nullptr};
      REQUIRE(b->ForwardSample(std::span<const StepInput>(&in, 1),
                               std::span<const TokenSampling>(&t, 1), &next)
                  .ok());
      REQUIRE(next >= 0);
      REQUIRE(next < vocab);
      out.push_back(next);
    }
    runs.push_back(out);
  }
  CHECK(runs[0] == runs[1]);  // graphs off and on, same seed: same tokens

  auto b = Make(m, CudaDType::kBf16, true);
  const SeqId s = b->AddSequence().value();
  const StepInput in{s, prompt, nullptr, false, nullptr};
  const std::span<const StepInput> one(&in, 1);
  int32_t token = -1;
  TokenSampling t;
  CHECK(b->ForwardSample(one, {}, &token).code() == StatusCode::kInvalidArgument);
  t.top_p = 1.5f;
  Status st = b->ForwardSample(one, std::span<const TokenSampling>(&t, 1), &token);
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK(st.message().find("top_p") != std::string::npos);
  t = TokenSampling{};
  StepInput all = in;
  all.all_logits = true;
  st = b->ForwardSample(std::span<const StepInput>(&all, 1), std::span<const TokenSampling>(&t, 1),
                        &token);
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK(st.message().find("all_logits") != std::string::npos);
  CudaBackendOptions o;
  o.max_penalty_tokens = 10;
  o.kv_blocks = 64;
  auto small = CudaBackend::Create(m, o).value();
  const SeqId s2 = small->AddSequence().value();
  const StepInput in2{s2, prompt, nullptr, false, nullptr};
  t.repetition_penalty = 1.1f;
  t.prompt = prompt;  // 50 tokens > 10
  st = small->ForwardSample(std::span<const StepInput>(&in2, 1),
                            std::span<const TokenSampling>(&t, 1), &token);
  CHECK(st.code() == StatusCode::kResourceExhausted);
  CHECK(st.message().find("max_penalty_tokens 10") != std::string::npos);
  CHECK(small->SequenceLength(s2) == 0);
  CHECK(small->Stats().used_blocks == 0);
  CHECK(b->SequenceLength(s) == 0);
}

// cuda_backend.h's bf16 batch-invariance claims: the same step shape is bit-identical (runs are
// deterministic), while another batch composition moves a request's logits by bf16 rounding only.
TEST_CASE("CudaBackend bf16: deterministic per shape, batch-dependent only to bf16 rounding") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const Model m = TestModel(128, 13);
  const int64_t vocab = m.config.vocab;
  std::mt19937 gen(41);
  const std::vector<int32_t> probe_prompt = RandomTokens(300, vocab, gen);
  const std::vector<int32_t> probe_next = RandomTokens(12, vocab, gen);
  // The probe request's logits: prefill, then 12 decode steps, beside `others` other requests
  // (prompts of 1..200 tokens, prefilled in the probe's first step as one mixed step).
  auto probe_logits = [&](CudaBackend& b, int others) {
    std::mt19937 g(97);
    std::vector<SeqId> seqs = {b.AddSequence().value()};
    std::vector<std::vector<int32_t>> prompts = {probe_prompt};
    for (int i = 0; i < others; ++i) {
      seqs.push_back(b.AddSequence().value());
      prompts.push_back(RandomTokens(1 + (i * 37) % 200, vocab, g));
    }
    std::vector<float> out;
    for (int step = 0; step <= 12; ++step) {
      std::vector<StepInput> batch;
      std::vector<int32_t> t = RandomTokens(seqs.size(), vocab, g);
      if (step > 0) t[0] = probe_next[step - 1];
      for (size_t i = 0; i < seqs.size(); ++i) {
        batch.push_back(
            {seqs[i],
             step == 0 ? std::span<const int32_t>(prompts[i]) : std::span<const int32_t>(&t[i], 1),
             nullptr, false, nullptr});
      }
      std::vector<float> logits(seqs.size() * vocab);
      REQUIRE(b.Forward(batch, logits.data()).ok());
      out.insert(out.end(), logits.begin(), logits.begin() + vocab);  // the probe's row
    }
    for (SeqId s : seqs) REQUIRE(b.FreeSequence(s).ok());
    return out;
  };
  auto b1 = Make(m, CudaDType::kBf16, true);
  auto b2 = Make(m, CudaDType::kBf16, true);
  const std::vector<float> alone = probe_logits(*b1, 0);
  // Determinism: the same schedule on another backend instance, bit for bit.
  const std::vector<float> alone_again = probe_logits(*b2, 0);
  CHECK(std::memcmp(alone.data(), alone_again.data(), alone.size() * 4) == 0);
  for (int others : {2, 8, 19}) {
    const std::vector<float> batched = probe_logits(*b1, others);
    const std::vector<float> batched_again = probe_logits(*b2, others);
    CHECK(std::memcmp(batched.data(), batched_again.data(), batched.size() * 4) == 0);
    double worst = 0;
    int64_t identical_steps = 0, same_argmax = 0;
    for (int step = 0; step <= 12; ++step) {
      const float* x = &batched[step * vocab];
      const float* y = &alone[step * vocab];
      worst = std::max(worst, RelL2(x, y, vocab));
      identical_steps += std::memcmp(x, y, vocab * 4) == 0;
      same_argmax += std::max_element(x, x + vocab) - x == std::max_element(y, y + vocab) - y;
    }
    // Reported, not asserted (cuda_backend.h: bit-identity across batch shapes is not promised).
    WARN("bf16 probe beside " << others << " requests: worst step rel L2 " << worst << ", "
                              << identical_steps << "/13 steps bit-identical, " << same_argmax
                              << "/13 same argmax");
    CHECK(worst < 1e-2);
  }
}

}  // namespace
}  // namespace sqz
