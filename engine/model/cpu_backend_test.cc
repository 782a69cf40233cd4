#include "engine/model/cpu_backend.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/model/dense_kv_context.h"
#include "engine/model/hf_loader.h"
#include "engine/model/hf_writer.h"

namespace sqz {
namespace {

// A small random GQA model with q/k/v bias and llama3 RoPE scaling.
Model RandomModel(int64_t q_heads = 4, int64_t kv_heads = 2, bool bias = true, uint64_t seed = 3) {
  ModelConfig c;
  c.hidden = 24;
  c.intermediate = 40;
  c.layers = 2;
  c.q_heads = q_heads;
  c.kv_heads = kv_heads;
  c.head_dim = 6;
  c.vocab = 37;
  c.max_positions = 512;
  c.qkv_bias = bias;
  c.rope.llama3_factor = 4.0f;
  c.rope.llama3_original_max_positions = 64;
  return Model(c, RandomWeights(c, seed));
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> u(0, static_cast<int32_t>(vocab) - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = u(gen);
  return t;
}

std::unique_ptr<CpuBackend> MakeBackend(const Model& m, int64_t blocks = 64) {
  auto b = CpuBackend::Create(m, CpuBackendOptions{blocks});
  REQUIRE(b.ok());
  return std::move(b).value();
}

// Logits of every token of `tokens` fed in chunks of the given sizes (cycled).
std::vector<float> ChunkedLogits(Backend& b, SeqId seq, const std::vector<int32_t>& tokens,
                                 const std::vector<int64_t>& chunks,
                                 const ContextAttention* ctx = nullptr) {
  const int64_t vocab = b.config().vocab;
  std::vector<float> out(tokens.size() * vocab);
  int64_t done = 0;
  for (size_t i = 0; done < static_cast<int64_t>(tokens.size()); ++i) {
    const int64_t n = std::min<int64_t>(chunks[i % chunks.size()], tokens.size() - done);
    StepInput in{seq, std::span<const int32_t>(tokens.data() + done, n), ctx, true};
    REQUIRE(b.Forward({&in, 1}, out.data() + done * vocab).ok());
    done += n;
  }
  return out;
}

TEST_CASE("CpuBackend: chunk invariance is exact") {
  for (int64_t kv_heads : {1, 2, 4}) {
    Model m = RandomModel(4, kv_heads, kv_heads != 2);
    auto b = MakeBackend(m);
    const auto tokens = RandomTokens(129, m.config.vocab, 9);
    SeqId a = b->AddSequence().value(), c = b->AddSequence().value();
    const auto whole = ChunkedLogits(*b, a, tokens, {129});
    const auto pieces = ChunkedLogits(*b, c, tokens, {1, 15, 3, 17, 1, 40});
    INFO("kv_heads " << kv_heads);
    CHECK(whole == pieces);
    for (float x : whole) REQUIRE(std::isfinite(x));
    CHECK(b->SequenceLength(a) == 129);
  }
}

TEST_CASE("CpuBackend: batch invariance is exact") {
  Model m = RandomModel();
  auto solo = MakeBackend(m);
  auto batched = MakeBackend(m);
  const std::vector<int64_t> lengths = {1, 3, 127, 17};
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<float>> alone;
  for (size_t i = 0; i < lengths.size(); ++i) {
    prompts.push_back(RandomTokens(lengths[i], m.config.vocab, 100 + i));
    SeqId s = solo->AddSequence().value();
    alone.push_back(ChunkedLogits(*solo, s, prompts[i], {lengths[i]}));
  }
  // All four prompts in one step, in a different order, each with all logits.
  std::vector<SeqId> ids;
  for (size_t i = 0; i < lengths.size(); ++i) ids.push_back(batched->AddSequence().value());
  const std::vector<size_t> order = {2, 0, 3, 1};
  std::vector<StepInput> batch;
  int64_t rows = 0;
  for (size_t i : order) {
    batch.push_back(StepInput{ids[i], prompts[i], nullptr, true});
    rows += lengths[i];
  }
  const int64_t vocab = m.config.vocab;
  std::vector<float> logits(rows * vocab);
  REQUIRE(batched->Forward(batch, logits.data()).ok());
  int64_t row = 0;
  for (size_t i : order) {
    std::vector<float> mine(logits.begin() + row * vocab,
                            logits.begin() + (row + lengths[i]) * vocab);
    CHECK(mine == alone[i]);
    row += lengths[i];
  }
  // A decode step of all four together == each alone (last-token logits only).
  std::vector<int32_t> next = {5, 6, 7, 8};
  std::vector<StepInput> step;
  for (size_t i = 0; i < 4; ++i) step.push_back(StepInput{ids[i], {&next[i], 1}});
  std::vector<float> together(4 * vocab);
  REQUIRE(batched->Forward(step, together.data()).ok());
  for (size_t i = 0; i < 4; ++i) {
    SeqId s = solo->AddSequence().value();
    std::vector<int32_t> all = prompts[i];
    all.push_back(next[i]);
    auto ref = ChunkedLogits(*solo, s, all, {static_cast<int64_t>(all.size())});
    std::vector<float> last(ref.end() - vocab, ref.end());
    CHECK(std::vector<float>(together.begin() + i * vocab, together.begin() + (i + 1) * vocab) ==
          last);
  }
}

TEST_CASE("CpuBackend: context + own tokens equals one sequence (DenseKvContext)") {
  Model m = RandomModel(6, 2, true, 11);
  auto b = MakeBackend(m);
  const int64_t vocab = m.config.vocab;
  for (int64_t ctx_len : {1, 16, 45}) {
    const auto ctx_tokens = RandomTokens(ctx_len, vocab, 50 + ctx_len);
    const auto own = RandomTokens(19, vocab, 60 + ctx_len);
    std::vector<int32_t> all = ctx_tokens;
    all.insert(all.end(), own.begin(), own.end());
    SeqId single = b->AddSequence().value();
    const auto ref = ChunkedLogits(*b, single, all, {7});

    SeqId ingest = b->AddSequence().value();
    ChunkedLogits(*b, ingest, ctx_tokens, {13});
    auto ctx = DenseKvContext::FromSequence(*b, ingest, ctx_len);
    REQUIRE(ctx.ok());
    REQUIRE((*ctx)->length() == ctx_len);
    SeqId q1 = b->AddSequence().value(), q2 = b->AddSequence().value();
    const auto got = ChunkedLogits(*b, q1, own, {19}, ctx->get());
    const auto got_chunked = ChunkedLogits(*b, q2, own, {2, 5}, ctx->get());
    CHECK(got == got_chunked);  // chunk invariance holds with a context too
    float max_abs = 0.0f, max_diff = 0.0f;
    for (size_t i = 0; i < got.size(); ++i) {
      const float want = ref[ctx_len * vocab + i];
      max_abs = std::max(max_abs, std::fabs(want));
      max_diff = std::max(max_diff, std::fabs(got[i] - want));
    }
    INFO("context " << ctx_len << " max diff " << max_diff << " max |logit| " << max_abs);
    CHECK(max_diff <= 1e-5f * max_abs);
    CHECK(b->SequenceLength(q1) == 19);
    for (SeqId s : {single, ingest, q1, q2}) REQUIRE(b->FreeSequence(s).ok());
  }
  CHECK(b->Stats().used_blocks == 0);
}

TEST_CASE("CpuBackend: q_out captures the post-RoPE queries of every layer") {
  Model m = RandomModel();
  auto b = MakeBackend(m);
  const auto tokens = RandomTokens(5, m.config.vocab, 1);
  const int64_t per = m.config.layers * m.config.q_dim();
  std::vector<float> q_all(5 * per, NAN), q_split(5 * per, NAN);
  SeqId a = b->AddSequence().value(), c = b->AddSequence().value();
  StepInput in{a, tokens, nullptr, false, q_all.data()};
  REQUIRE(b->Forward({&in, 1}, nullptr).ok());
  // Same tokens as 2 + 3: the layout is [layers][tokens][q_dim] per call.
  std::vector<float> q2(2 * per), q3(3 * per);
  StepInput i2{c, {tokens.data(), 2}, nullptr, false, q2.data()};
  StepInput i3{c, {tokens.data() + 2, 3}, nullptr, false, q3.data()};
  REQUIRE(b->Forward({&i2, 1}, nullptr).ok());
  REQUIRE(b->Forward({&i3, 1}, nullptr).ok());
  const int64_t qd = m.config.q_dim();
  for (int64_t layer = 0; layer < m.config.layers; ++layer) {
    for (int64_t t = 0; t < 5; ++t) {
      const float* want = q_all.data() + (layer * 5 + t) * qd;
      const float* got =
          t < 2 ? q2.data() + (layer * 2 + t) * qd : q3.data() + (layer * 3 + t - 2) * qd;
      for (int64_t j = 0; j < qd; ++j) REQUIRE(got[j] == want[j]);
      REQUIRE(std::isfinite(want[0]));
    }
  }
}

TEST_CASE("CpuBackend: paged pool allocates per block, frees, reuses, and runs out cleanly") {
  Model m = RandomModel();
  auto b = MakeBackend(m, 3);
  CHECK(b->Stats().total_blocks == 3);
  CHECK(b->Stats().free_blocks == 3);
  SeqId s = b->AddSequence().value();
  CHECK(b->Stats().used_blocks == 0);  // nothing allocated before tokens arrive
  auto t16 = RandomTokens(16, m.config.vocab, 2);
  std::vector<float> logits(m.config.vocab);
  StepInput in{s, t16};
  REQUIRE(b->Forward({&in, 1}, logits.data()).ok());
  CHECK(b->Stats().used_blocks == 1);  // exactly full
  int32_t one = 4;
  in.tokens = {&one, 1};
  REQUIRE(b->Forward({&in, 1}, logits.data()).ok());
  CHECK(b->Stats().used_blocks == 2);  // token 17 opened a block
  SeqId s2 = b->AddSequence().value();
  auto t17 = RandomTokens(17, m.config.vocab, 3);
  StepInput in2{s2, t17};
  Status full = b->Forward({&in2, 1}, logits.data());
  CHECK(full.code() == StatusCode::kResourceExhausted);
  CHECK(full.message().find("needs 2 new KV blocks but only 1 of 3 are free") != std::string::npos);
  CHECK(b->SequenceLength(s2) == 0);  // unchanged
  CHECK(b->Stats().used_blocks == 2);
  // A batch where each item fits alone but not together fails as a whole.
  StepInput both[2] = {StepInput{s, t16}, StepInput{s2, {t17.data(), 1}}};
  CHECK(b->Forward(both, nullptr).code() == StatusCode::kResourceExhausted);
  CHECK(b->SequenceLength(s) == 17);
  REQUIRE(b->FreeSequence(s).ok());
  CHECK(b->Stats().free_blocks == 3);
  CHECK(b->Stats().sequences == 1);
  // The freed blocks are reused, and results do not depend on which blocks a sequence got.
  auto fresh = MakeBackend(m, 3);
  SeqId f = fresh->AddSequence().value();
  std::vector<float> want(17 * m.config.vocab), got(17 * m.config.vocab);
  StepInput fin{f, t17, nullptr, true};
  REQUIRE(fresh->Forward({&fin, 1}, want.data()).ok());
  in2.all_logits = true;
  REQUIRE(b->Forward({&in2, 1}, got.data()).ok());
  CHECK(got == want);
  CHECK(b->Stats().used_blocks == 2);
  CHECK(b->FreeSequence(s).code() == StatusCode::kNotFound);
  CHECK(b->SequenceLength(s) == -1);
}

TEST_CASE("CpuBackend: input errors name the problem and change nothing") {
  Model m = RandomModel();
  auto b = MakeBackend(m);
  SeqId s = b->AddSequence().value();
  std::vector<int32_t> ok = {1, 2, 3};
  auto expect = [&](std::vector<StepInput> batch, StatusCode code, const std::string& fragment) {
    Status st = b->Forward(batch, nullptr);
    INFO(st.ToString());
    CHECK(st.code() == code);
    CHECK(st.message().find(fragment) != std::string::npos);
    CHECK(b->SequenceLength(s) == 0);
  };
  expect({StepInput{s + 100, ok}}, StatusCode::kInvalidArgument, "unknown sequence");
  expect({StepInput{s, {}}}, StatusCode::kInvalidArgument, "no tokens");
  std::vector<int32_t> bad = {1, 37};
  expect({StepInput{s, bad}}, StatusCode::kInvalidArgument,
         "token id 37 at index 1 is outside the vocabulary [0, 37)");
  std::vector<int32_t> neg = {-1};
  expect({StepInput{s, neg}}, StatusCode::kInvalidArgument, "token id -1");
  expect({StepInput{s, ok}, StepInput{s, ok}}, StatusCode::kInvalidArgument, "appears twice");
  std::vector<int32_t> long_prompt(513, 1);
  expect({StepInput{s, long_prompt}}, StatusCode::kOutOfRange,
         "positions up to 513 exceed max_position_embeddings 512");

  // Context length must not change between steps.
  DenseKvContext ctx(m.config.layers, 2, m.config.q_heads, m.config.kv_heads, m.config.head_dim,
                     std::vector<float>(m.config.layers * 2 * m.config.kv_dim(), 0.5f),
                     std::vector<float>(m.config.layers * 2 * m.config.kv_dim(), 0.25f));
  REQUIRE(b->Forward(std::vector<StepInput>{StepInput{s, ok, &ctx}}, nullptr).ok());
  Status changed = b->Forward(std::vector<StepInput>{StepInput{s, ok}}, nullptr);
  CHECK(changed.code() == StatusCode::kInvalidArgument);
  CHECK(changed.message().find("context length 0 differs from the 2") != std::string::npos);

  std::vector<float> k(10 * m.config.kv_dim()), v(k.size());
  CHECK(b->ReadKv(s + 100, 0, 0, 1, k.data(), v.data()).code() == StatusCode::kNotFound);
  CHECK(b->ReadKv(s, 2, 0, 1, k.data(), v.data()).code() == StatusCode::kInvalidArgument);
  CHECK(b->ReadKv(s, 0, 1, 3, k.data(), v.data()).code() == StatusCode::kOutOfRange);
  CHECK(b->ReadKv(s, 1, 1, 2, k.data(), v.data()).ok());

  auto no_blocks = CpuBackend::Create(m, CpuBackendOptions{0});
  CHECK(no_blocks.status().code() == StatusCode::kInvalidArgument);
  Model broken = RandomModel();
  broken.weights.layers[1].w_up.pop_back();
  CHECK(CpuBackend::Create(broken, {}).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("CpuBackend: stories260K greedy reproduces the llama2.c golden ids") {
  const std::string dir = std::string(SQZ_SHARED_DIR) + "/models/stories260K";
  if (!std::filesystem::exists(dir + "/golden_greedy_outputs.json")) {
    WARN("skipped: " << dir << " is absent");
    return;
  }
  auto model = LoadHfModel(dir);
  REQUIRE(model.ok());
  std::ifstream in(dir + "/golden_greedy_outputs.json");
  const auto golden = nlohmann::json::parse(in);
  const std::vector<int32_t> ids = golden["empty_prompt_256"]["ids"].get<std::vector<int32_t>>();
  auto b = MakeBackend(**model, 32);
  SeqId s = b->AddSequence().value();
  const int64_t vocab = (*model)->config.vocab;
  std::vector<float> logits(vocab);
  std::vector<int32_t> got = {ids[0]};
  while (got.size() < ids.size()) {
    StepInput step{s, {&got.back(), 1}};
    REQUIRE(b->Forward({&step, 1}, logits.data()).ok());
    got.push_back(
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
  }
  CHECK(got == ids);
}

}  // namespace
}  // namespace sqz
