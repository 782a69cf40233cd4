#include "engine/squeeze/ingest.h"

#include <catch2/catch.hpp>
#include <random>

#include "engine/model/hf_writer.h"
#include "engine/squeeze/model_test_util.h"

namespace sqz {
namespace {

struct Shape {
  const char* name;
  int64_t q_heads, kv_heads, head_dim;
  bool bias, tied, llama3;
};

Model RandomModel(const Shape& s, uint64_t seed) {
  ModelConfig c;
  c.hidden = 32;
  c.intermediate = 48;
  c.layers = 2;
  c.q_heads = s.q_heads;
  c.kv_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.vocab = 61;
  c.max_positions = 1024;
  c.qkv_bias = s.bias;
  c.tie_embeddings = s.tied;
  if (s.llama3) {
    c.rope.llama3_factor = 8.0f;
    c.rope.llama3_original_max_positions = 128;
  }
  return Model(c, RandomWeights(c, seed));
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(gen() % vocab);
  return t;
}

std::unique_ptr<CpuBackend> MakeBackend(const Model& m, int64_t blocks = 96) {
  auto b = CpuBackend::Create(m, CpuBackendOptions{blocks});
  REQUIRE(b.ok());
  return std::move(b).value();
}

TEST_CASE("ingestion captures the K/V and window queries of a one-shot dense prefill") {
  const Model m = RandomModel({"gqa", 4, 2, 8, true, false, true}, 5);
  auto b = MakeBackend(m);
  SqueezeOptions o;
  o.prefill_chunk_tokens = 7;
  o.observation_window = 20;
  const auto tokens = RandomTokens(129, m.config.vocab, 1);
  std::vector<std::pair<IngestStage, double>> seen;
  auto c = CaptureContext(*b, tokens, o, [&](IngestStage s, double f) { seen.emplace_back(s, f); });
  REQUIRE(c.ok());
  REQUIRE(b->Stats().sequences == 0);  // freed
  REQUIRE(seen.back().first == IngestStage::kPrefilling);
  REQUIRE(seen.back().second == 1.0);
  // Reference: the whole context in one step, capturing every query.
  auto seq = b->AddSequence();
  REQUIRE(seq.ok());
  const int64_t qrow = m.config.q_heads * m.config.head_dim;
  std::vector<float> q_all(2 * 129 * qrow);
  StepInput in{*seq, tokens, nullptr, false, q_all.data()};
  REQUIRE(b->Forward({&in, 1}, nullptr).ok());
  const int64_t kv = 129 * m.config.kv_dim();
  std::vector<float> k(kv), v(kv);
  for (int l = 0; l < 2; ++l) {
    REQUIRE(b->ReadKv(*seq, l, 0, 129, k.data(), v.data()).ok());
    REQUIRE(std::equal(k.begin(), k.end(), c->k.begin() + l * kv));
    REQUIRE(std::equal(v.begin(), v.end(), c->v.begin() + l * kv));
    for (int64_t t = 0; t < 20; ++t) {
      const float* want = q_all.data() + (l * 129 + 109 + t) * qrow;
      REQUIRE(std::equal(want, want + qrow, c->window_q.data() + (l * 20 + t) * qrow));
    }
  }
}

TEST_CASE("DENSE and SQUEEZED at budget 1 give the logits of plain generation (random models)") {
  const Shape shapes[] = {
      {"mha", 4, 4, 8, false, true, false},
      {"gqa+bias+llama3", 6, 2, 8, true, false, true},
      {"mqa", 4, 1, 16, false, false, false},
  };
  for (const Shape& s : shapes) {
    for (int64_t n : {1, 3, 127, 300}) {
      INFO(s.name << " context " << n);
      const Model m = RandomModel(s, 11);
      auto b = MakeBackend(m);
      const auto ctx = RandomTokens(n, m.config.vocab, 2 + n);
      const auto query = RandomTokens(13, m.config.vocab, 3);
      SqueezeOptions so;
      so.prefill_chunk_tokens = 50;
      so.coarse_fraction = 0.02;
      AttentionOptions dense;
      dense.mode = AttentionMode::kDense;
      AttentionOptions full;
      full.kv_budget = 1.0;
      full.block_size = 5;
      AttentionOptions full_hier = full;
      full_hier.hierarchical = true;
      for (const AttentionOptions& ao : {dense, full, full_hier}) {
        auto diff = testing::CompareWithPlain(*b, ctx, query, so, ao, 6);
        REQUIRE(diff.ok());
        REQUIRE(*diff <= 1e-5);
      }
      // A real squeeze changes the logits (the test can fail).
      if (n == 300) {
        AttentionOptions sparse;
        sparse.kv_budget = 0.05;
        auto diff = testing::CompareWithPlain(*b, ctx, query, so, sparse, 6);
        REQUIRE(diff.ok());
        REQUIRE(*diff > 1e-5);
      }
      REQUIRE(b->Stats().sequences == 0);
    }
  }
}

TEST_CASE("step-wise ingestion batched with another sequence captures the same context") {
  const Model m = RandomModel({"gqa", 4, 2, 8, true, false, true}, 6);
  auto b = MakeBackend(m);
  SqueezeOptions o;
  o.prefill_chunk_tokens = 32;
  o.observation_window = 30;
  const auto tokens = RandomTokens(200, m.config.vocab, 4);
  auto whole = CaptureContext(*b, tokens, o);
  REQUIRE(whole.ok());

  auto ing = ContextIngestion::Start(*b, tokens, o);
  REQUIRE(ing.ok());
  REQUIRE((*ing)->Capture().status().code() == StatusCode::kFailedPrecondition);
  auto other = b->AddSequence();
  REQUIRE(other.ok());
  const auto other_tokens = RandomTokens(40, m.config.vocab, 9);
  const int64_t budgets[] = {5, 64, 1, 17};
  int step = 0;
  std::vector<float> logits(2 * m.config.vocab);  // one row per batch entry (all_logits off)
  while (!(*ing)->prefilled()) {
    const StepInput a = (*ing)->NextStep(budgets[step % 4]);
    REQUIRE(a.tokens.size() <= 32);
    const StepInput again = (*ing)->NextStep(1000);  // same chunk until StepDone
    REQUIRE(again.tokens.data() == a.tokens.data());
    REQUIRE(again.tokens.size() == a.tokens.size());
    std::vector<StepInput> batch = {a};
    if (step < 40) {
      batch.push_back(StepInput{*other, std::span<const int32_t>(&other_tokens[step], 1)});
    }
    REQUIRE(b->Forward(batch, batch.size() > 1 ? logits.data() : nullptr).ok());
    (*ing)->StepDone();
    ++step;
  }
  auto captured = (*ing)->Capture();
  REQUIRE(captured.ok());
  REQUIRE(captured->k == whole->k);
  REQUIRE(captured->v == whole->v);
  REQUIRE(captured->window_q == whole->window_q);
  ing->reset();
  REQUIRE(b->Stats().sequences == 1);  // only `other` is left
}

TEST_CASE("ingestion errors are reported and free the sequence") {
  const Model m = RandomModel({"gqa", 4, 2, 8, false, true, false}, 2);
  SqueezeOptions o;
  {
    auto b = MakeBackend(m, 4);  // 64 tokens of KV
    auto r = IngestContext(*b, RandomTokens(100, m.config.vocab, 1), o);
    REQUIRE(r.status().code() == StatusCode::kResourceExhausted);
    REQUIRE_THAT(r.status().message(), Catch::Contains("ingestion prefill at token 4: "));
    REQUIRE(b->Stats().sequences == 0);
    REQUIRE(b->Stats().used_blocks == 0);
  }
  auto b = MakeBackend(m);
  REQUIRE_THAT(IngestContext(*b, {}, o).status().message(), Catch::Contains("empty context"));
  auto bad_token = RandomTokens(10, m.config.vocab, 1);
  bad_token[4] = 1000;
  auto r = IngestContext(*b, bad_token, o);
  REQUIRE(r.status().code() == StatusCode::kInvalidArgument);
  REQUIRE_THAT(r.status().message(), Catch::Contains("ingestion prefill"));
  o.prefill_chunk_tokens = 0;
  REQUIRE_THAT(IngestContext(*b, RandomTokens(10, m.config.vocab, 1), o).status().message(),
               Catch::Contains("prefill_chunk_tokens"));
  REQUIRE(b->Stats().sequences == 0);
}

}  // namespace
}  // namespace sqz
