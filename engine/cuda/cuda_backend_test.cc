// CudaBackend against the CPU backend (the oracle) and against stories260K's golden greedy ids.
// Needs a CUDA device: without one every case WARNs "skipped: ..." and passes.
// SQZ_SHARED_DIR in the environment overrides the compiled-in shared assets folder (the GPU
// machine gets the model carried next to the binary).
#include "engine/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/model/cpu_backend.h"
#include "engine/model/hf_loader.h"
#include "engine/model/hf_writer.h"
#include "kernels/cuda/test_util.h"

namespace sqz {
namespace {

std::string SharedDir() {
  const char* env = std::getenv("SQZ_SHARED_DIR");
  return env && *env ? env : SQZ_SHARED_DIR;
}

double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) return INFINITY;
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

Model RandomModel(int64_t hidden, int64_t q_heads, int64_t kv_heads, int64_t head_dim, bool bias,
                  uint64_t seed) {
  ModelConfig c;
  c.hidden = hidden;
  c.intermediate = hidden + 72;
  c.layers = 2;
  c.q_heads = q_heads;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.vocab = 301;
  c.max_positions = 1024;
  c.qkv_bias = bias;
  c.rope.llama3_factor = 4.0f;
  c.rope.llama3_original_max_positions = 64;
  return Model(c, RandomWeights(c, seed));
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, std::mt19937& gen) {
  std::uniform_int_distribution<int32_t> u(0, static_cast<int32_t>(vocab) - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = u(gen);
  return t;
}

std::unique_ptr<CudaBackend> MakeCuda(const Model& m, CudaDType dtype, int64_t blocks = 64,
                                      int64_t max_step_tokens = 512) {
  CudaBackendOptions o;
  o.dtype = dtype;
  o.kv_blocks = blocks;
  o.max_step_tokens = max_step_tokens;
  o.max_logit_rows = 50;  // several LM-head passes in the tests' large steps
  auto b = CudaBackend::Create(m, o);
  INFO(b.status().ToString());
  REQUIRE(b.ok());
  return std::move(b).value();
}

std::unique_ptr<CpuBackend> MakeCpu(const Model& m, int64_t blocks = 64) {
  auto b = CpuBackend::Create(m, CpuBackendOptions{blocks});
  REQUIRE(b.ok());
  return std::move(b).value();
}

// Runs the same schedule of mixed steps on both backends and compares every step's logits, the
// captured queries and finally the KV of every layer. Returns the largest step error.
double CompareSchedule(const Model& m, CudaDType dtype, double tol, uint32_t seed) {
  auto cpu = MakeCpu(m);
  auto gpu = MakeCuda(m, dtype);
  const int64_t vocab = m.config.vocab, layers = m.config.layers, q_dim = m.config.q_dim();
  std::mt19937 gen(seed);
  std::vector<SeqId> cs, gs;
  for (int i = 0; i < 3; ++i) {
    cs.push_back(cpu->AddSequence().value());
    gs.push_back(gpu->AddSequence().value());
  }
  // Steps: (sequence, tokens, all_logits, capture q) items. Sizes cover fresh prefills, a single
  // first token (decode path at position 0), chunks after a cache not aligned to 16, 129 tokens.
  struct ItemSpec {
    int seq;
    int64_t n;
    bool all;
    bool capture;
  };
  std::vector<std::vector<ItemSpec>> steps = {
      {{0, 37, true, false}, {1, 1, true, false}},
      {{0, 1, false, false}, {1, 20, true, true}, {2, 129, false, false}},
      {{2, 3, true, false}, {0, 1, false, false}},
  };
  for (int i = 0; i < 12; ++i) {
    steps.push_back({{0, 1, false, false}, {1, 1, false, false}, {2, 1, false, false}});
  }
  steps.push_back({{1, 17, true, false}, {0, 1, false, false}});
  double worst = 0;
  for (size_t s = 0; s < steps.size(); ++s) {
    std::vector<std::vector<int32_t>> toks;
    std::vector<std::vector<float>> q_cpu, q_gpu;
    for (const ItemSpec& it : steps[s]) {
      toks.push_back(RandomTokens(it.n, vocab, gen));
      q_cpu.emplace_back(it.capture ? layers * it.n * q_dim : 0);
      q_gpu.emplace_back(it.capture ? layers * it.n * q_dim : 0);
    }
    std::vector<StepInput> cb, gb;
    int64_t rows = 0;
    for (size_t i = 0; i < steps[s].size(); ++i) {
      const ItemSpec& it = steps[s][i];
      cb.push_back({cs[it.seq], toks[i], nullptr, it.all, it.capture ? q_cpu[i].data() : nullptr});
      gb.push_back({gs[it.seq], toks[i], nullptr, it.all, it.capture ? q_gpu[i].data() : nullptr});
      rows += it.all ? it.n : 1;
    }
    std::vector<float> lc(rows * vocab), lg(rows * vocab, NAN);
    REQUIRE(cpu->Forward(cb, lc.data()).ok());
    const Status st = gpu->Forward(gb, lg.data());
    INFO("step " << s << ": " << st.ToString());
    REQUIRE(st.ok());
    const double err = RelL2(lg, lc);
    INFO("step " << s << " logits relative L2 " << err);
    CHECK(err < tol);
    worst = std::max(worst, err);
    for (size_t i = 0; i < q_cpu.size(); ++i) {
      if (!q_cpu[i].empty()) CHECK(RelL2(q_gpu[i], q_cpu[i]) < tol);
    }
  }
  for (int i = 0; i < 3; ++i) {
    const int64_t len = cpu->SequenceLength(cs[i]);
    REQUIRE(gpu->SequenceLength(gs[i]) == len);
    const int64_t kv = len * m.config.kv_dim();
    for (int layer = 0; layer < layers; ++layer) {
      std::vector<float> kc(kv), vc(kv), kg(kv), vg(kv);
      REQUIRE(cpu->ReadKv(cs[i], layer, 0, len, kc.data(), vc.data()).ok());
      REQUIRE(gpu->ReadKv(gs[i], layer, 0, len, kg.data(), vg.data()).ok());
      CHECK(RelL2(kg, kc) < tol);
      CHECK(RelL2(vg, vc) < tol);
    }
    // A range that starts inside a block.
    const int64_t begin = 5, n = len - 7, w = m.config.kv_dim();
    std::vector<float> kc(n * w), vc(n * w), kg(n * w), vg(n * w);
    REQUIRE(cpu->ReadKv(cs[i], 1, begin, n, kc.data(), vc.data()).ok());
    REQUIRE(gpu->ReadKv(gs[i], 1, begin, n, kg.data(), vg.data()).ok());
    CHECK(RelL2(kg, kc) < tol);
    CHECK(RelL2(vg, vc) < tol);
  }
  CHECK(gpu->Stats().used_blocks == cpu->Stats().used_blocks);
  CHECK(gpu->Stats().sequences == 3);
  return worst;
}

struct Shape {
  int64_t hidden, q_heads, kv_heads, head_dim;
  bool bias;
};
const std::vector<Shape> kShapes = {
    {24, 4, 2, 6, true},      // odd head_dim 6: reference kernels in both modes
    {64, 8, 4, 8, false},     // stories260K's attention shape
    {128, 4, 1, 64, true},    // tensor-core prefill and decode, group 4
    {256, 8, 2, 128, false},  // Llama-3-8B's head_dim and group
};

TEST_CASE("CudaBackend fp32 matches the CPU backend on a mixed prefill/decode schedule") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint64_t seed = 1;
  for (const Shape& s : kShapes) {
    Model m = RandomModel(s.hidden, s.q_heads, s.kv_heads, s.head_dim, s.bias, seed++);
    INFO("hidden " << s.hidden << " heads " << s.q_heads << "/" << s.kv_heads << " d "
                   << s.head_dim);
    const double worst = CompareSchedule(m, CudaDType::kF32, 1e-4, 77);
    WARN("fp32 worst step logits relative L2 " << worst << " (head_dim " << s.head_dim << ")");
  }
}

TEST_CASE("CudaBackend bf16 matches the CPU backend to bf16 rounding") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint64_t seed = 1;
  for (const Shape& s : kShapes) {
    Model m = RandomModel(s.hidden, s.q_heads, s.kv_heads, s.head_dim, s.bias, seed++);
    INFO("hidden " << s.hidden << " heads " << s.q_heads << "/" << s.kv_heads << " d "
                   << s.head_dim);
    const double worst = CompareSchedule(m, CudaDType::kBf16, 5e-2, 77);
    WARN("bf16 worst step logits relative L2 " << worst << " (head_dim " << s.head_dim << ")");
  }
}

TEST_CASE("CudaBackend fp32 is batch and chunk invariant, bit for bit") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  Model m = RandomModel(64, 8, 2, 8, true, 9);
  const int64_t vocab = m.config.vocab;
  std::mt19937 gen(5);
  const auto tokens = RandomTokens(70, vocab, gen);
  const auto other = RandomTokens(70, vocab, gen);
  // Reference: one chunk, alone.
  auto ref = MakeCuda(m, CudaDType::kF32);
  const SeqId r = ref->AddSequence().value();
  std::vector<float> want(tokens.size() * vocab);
  StepInput whole{r, tokens, nullptr, true};
  REQUIRE(ref->Forward({&whole, 1}, want.data()).ok());
  // Chunks of 1, 3, 16, 5, ... batched with another sequence that runs different chunks.
  auto b = MakeCuda(m, CudaDType::kF32);
  const SeqId s = b->AddSequence().value(), o = b->AddSequence().value();
  const std::vector<int64_t> sizes = {1, 3, 16, 5, 1, 1, 29, 14};
  int64_t done = 0, other_done = 0;
  std::vector<float> got(tokens.size() * vocab);
  for (size_t i = 0; done < static_cast<int64_t>(tokens.size()); ++i) {
    const int64_t n = std::min<int64_t>(sizes[i % sizes.size()], tokens.size() - done);
    const int64_t on = 1 + static_cast<int64_t>(i % 4);
    std::vector<StepInput> batch = {
        {o, std::span<const int32_t>(other.data() + other_done, on), nullptr, true},
        {s, std::span<const int32_t>(tokens.data() + done, n), nullptr, true}};
    std::vector<float> logits((on + n) * vocab);
    REQUIRE(b->Forward(batch, logits.data()).ok());
    std::copy(logits.begin() + on * vocab, logits.end(), got.begin() + done * vocab);
    done += n;
    other_done += on;
  }
  CHECK(got == want);
}

TEST_CASE("CudaBackend refuses bad steps and options with clear messages") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  Model m = RandomModel(64, 8, 4, 8, false, 4);
  auto b = MakeCuda(m, CudaDType::kBf16, /*blocks=*/3, /*max_step_tokens=*/64);
  const SeqId s = b->AddSequence().value();
  std::vector<int32_t> one = {1}, many(60, 2), bad = {301};
  std::vector<float> logits(64 * 301);
  auto expect = [&](std::vector<StepInput> batch, StatusCode code, const std::string& text) {
    const Status st = b->Forward(batch, logits.data());
    INFO(st.ToString());
    CHECK(st.code() == code);
    CHECK(st.message().find(text) != std::string::npos);
    CHECK(b->SequenceLength(s) == 0);
    CHECK(b->Stats().used_blocks == 0);
  };
  class Ctx : public ContextAttention {
   public:
    int64_t length() const override { return 2; }
    void Attend(int, const float*, int64_t, int64_t, float*,
                cpu::AttentionPartial*) const override {}
  } ctx;
  expect({{s + 100, one}}, StatusCode::kInvalidArgument, "unknown sequence");
  expect({{s, bad}}, StatusCode::kInvalidArgument, "outside the vocabulary");
  // A context the GPU cannot see into (not a SnapshotAttention); cuda_context_test covers real ones.
  expect({{s, one, &ctx}}, StatusCode::kUnimplemented, "this ContextAttention has no snapshot");
  expect({{s, many}}, StatusCode::kResourceExhausted, "new KV blocks");
  std::vector<int32_t> too_many(65, 1);
  expect({{s, too_many}}, StatusCode::kInvalidArgument, "max_step_tokens");
  // Positions beyond max_position_embeddings (1024): fill to 1020 with a large pool first.
  auto big = MakeCuda(m, CudaDType::kBf16, 128, 512);
  const SeqId t = big->AddSequence().value();
  std::vector<int32_t> chunk(510, 3);
  for (int i = 0; i < 2; ++i) {
    StepInput in{t, chunk};
    REQUIRE(big->Forward({&in, 1}, nullptr).ok());
  }
  std::vector<int32_t> five(5, 1);
  StepInput over{t, five};
  const Status st = big->Forward({&over, 1}, logits.data());
  CHECK(st.code() == StatusCode::kOutOfRange);
  CHECK(big->SequenceLength(t) == 1020);

  // ReadKv.
  std::vector<float> k(16 * 32), v(16 * 32);
  CHECK(b->ReadKv(s + 100, 0, 0, 0, k.data(), v.data()).code() == StatusCode::kNotFound);
  CHECK(b->ReadKv(s, 2, 0, 0, k.data(), v.data()).code() == StatusCode::kInvalidArgument);
  CHECK(b->ReadKv(s, 0, 0, 1, k.data(), v.data()).code() == StatusCode::kOutOfRange);
  CHECK(b->ReadKv(s, 0, 0, 0, k.data(), v.data()).ok());
  // Free returns the blocks.
  CHECK(big->Stats().used_blocks == 64);
  REQUIRE(big->FreeSequence(t).ok());
  CHECK(big->Stats().used_blocks == 0);
  CHECK(big->FreeSequence(t).code() == StatusCode::kNotFound);

  // Options.
  auto create = [&](CudaBackendOptions o) { return CudaBackend::Create(m, o).status(); };
  CudaBackendOptions o;
  o.kv_blocks = 0;
  CHECK(create(o).message().find("kv_blocks") != std::string::npos);
  o = {};
  o.max_step_tokens = 0;
  CHECK(create(o).message().find("max_step_tokens") != std::string::npos);
  o = {};
  o.context_budget_bytes = -1;
  CHECK(create(o).message().find("context_budget_bytes") != std::string::npos);
  o = {};
  o.device = 99;
  CHECK(create(o).code() == StatusCode::kInvalidArgument);
  o = {};
  o.kv_blocks = int64_t{1} << 27;  // 2^31 tokens: far beyond the device
  const Status big_pool = create(o);
  CHECK(big_pool.code() == StatusCode::kResourceExhausted);
  CHECK(big_pool.message().find("KV pool") != std::string::npos);
  ModelConfig wide = m.config;
  wide.head_dim = 512;
  CHECK(CudaBackend::CreateRandom(wide, CudaBackendOptions{}, 1).status().code() ==
        StatusCode::kUnimplemented);
}

TEST_CASE("CudaBackend::CreateRandom builds a model on the GPU, reproducibly") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  ModelConfig c = RandomModel(128, 4, 2, 32, true, 1).config;
  c.tie_embeddings = false;
  CudaBackendOptions o;
  o.kv_blocks = 16;
  o.max_step_tokens = 64;
  std::vector<int32_t> toks = {5, 17, 300, 0, 42};
  auto logits_of = [&](CudaDType dtype, uint64_t seed) {
    o.dtype = dtype;
    auto b = CudaBackend::CreateRandom(c, o, seed);
    INFO(b.status().ToString());
    REQUIRE(b.ok());
    const SeqId s = (*b)->AddSequence().value();
    std::vector<float> l(toks.size() * c.vocab);
    StepInput in{s, toks, nullptr, true};
    REQUIRE((*b)->Forward({&in, 1}, l.data()).ok());
    CHECK((*b)->weight_bytes() > 0);
    CHECK((*b)->kv_pool_bytes() ==
          2ull * c.layers * 16 * 16 * c.kv_dim() * (dtype == CudaDType::kF32 ? 4 : 2));
    return l;
  };
  for (CudaDType dtype : {CudaDType::kF32, CudaDType::kBf16}) {
    const auto a = logits_of(dtype, 7), a2 = logits_of(dtype, 7), b = logits_of(dtype, 8);
    CHECK(std::all_of(a.begin(), a.end(), [](float x) { return std::isfinite(x); }));
    CHECK(a == a2);
    CHECK(RelL2(a, b) > 0.1);
    // Not degenerate: logits spread.
    const auto [lo, hi] = std::minmax_element(a.begin(), a.end());
    CHECK(*hi - *lo > 1.0f);
  }
}

TEST_CASE("CudaBackend on stories260K: fp32 reproduces the golden greedy ids, bf16 is close") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const std::string dir = SharedDir() + "/models/stories260K";
  if (!std::filesystem::exists(dir + "/golden_greedy_outputs.json")) {
    WARN("skipped: " << dir << " is absent");
    return;
  }
  auto model = LoadHfModel(dir);
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  const Model& m = **model;
  std::ifstream in(dir + "/golden_greedy_outputs.json");
  const auto golden = nlohmann::json::parse(in);
  const std::vector<int32_t> ids = golden["empty_prompt_256"]["ids"].get<std::vector<int32_t>>();
  const int64_t vocab = m.config.vocab;

  auto greedy = [&](Backend& b) {
    const SeqId s = b.AddSequence().value();
    std::vector<float> logits(vocab);
    std::vector<int32_t> got = {ids[0]};
    while (got.size() < ids.size()) {
      StepInput step{s, {&got.back(), 1}};
      REQUIRE(b.Forward({&step, 1}, logits.data()).ok());
      got.push_back(
          static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    }
    return got;
  };
  auto f32 = MakeCuda(m, CudaDType::kF32, 32);
  CHECK(greedy(*f32) == ids);

  // bf16: logits of the golden sequence, teacher-forced in one prefill and then token by token,
  // against the CPU backend.
  auto bf = MakeCuda(m, CudaDType::kBf16, 64);
  auto cpu = MakeCpu(m, 64);
  const SeqId sg = bf->AddSequence().value(), sc = cpu->AddSequence().value();
  const int64_t prefill = 200;
  std::vector<float> lg(prefill * vocab), lc(prefill * vocab);
  StepInput ig{sg, {ids.data(), prefill}, nullptr, true},
      ic{sc, {ids.data(), prefill}, nullptr, true};
  REQUIRE(bf->Forward({&ig, 1}, lg.data()).ok());
  REQUIRE(cpu->Forward({&ic, 1}, lc.data()).ok());
  const double prefill_err = RelL2(lg, lc);
  std::vector<float> dg, dc;
  for (size_t t = prefill; t < ids.size(); ++t) {
    std::vector<float> a(vocab), c(vocab);
    StepInput sg1{sg, {&ids[t], 1}}, sc1{sc, {&ids[t], 1}};
    REQUIRE(bf->Forward({&sg1, 1}, a.data()).ok());
    REQUIRE(cpu->Forward({&sc1, 1}, c.data()).ok());
    dg.insert(dg.end(), a.begin(), a.end());
    dc.insert(dc.end(), c.begin(), c.end());
  }
  const double decode_err = RelL2(dg, dc);
  WARN("stories260K bf16 vs CPU logits relative L2: prefill " << prefill_err << ", decode "
                                                              << decode_err);
  CHECK(prefill_err < 1e-2);
  CHECK(decode_err < 1e-2);
  auto bf2 = MakeCuda(m, CudaDType::kBf16, 32);
  const auto bf_ids = greedy(*bf2);
  int64_t agree = 0;
  while (agree < static_cast<int64_t>(ids.size()) && bf_ids[agree] == ids[agree]) ++agree;
  WARN("stories260K bf16 greedy: first " << agree << " of " << ids.size()
                                         << " ids equal the golden ones");
}

}  // namespace
}  // namespace sqz
