#include "engine/runtime/engine.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <thread>

#include "engine/model/cpu_backend.h"
#include "engine/model/generate.h"
#include "engine/model/hf_loader.h"
#include "engine/squeeze/ingest.h"

namespace sqz {
namespace {

const std::string kModelDir = std::string(SQZ_SHARED_DIR) + "/models/stories260K";

struct Fixture {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

// Loads stories260K once; null (test skipped) when the shared folder is absent.
const Fixture* Stories() {
  static Fixture* f = [] {
    if (!std::filesystem::exists(kModelDir + "/model.safetensors")) return (Fixture*)nullptr;
    auto* fx = new Fixture;
    fx->model = std::move(LoadHfModel(kModelDir)).value();
    fx->tokenizer = std::move(Tokenizer::FromHfDirectory(kModelDir)).value();
    return fx;
  }();
  return f;
}

#define REQUIRE_STORIES()                                                        \
  const Fixture* fx = Stories();                                                 \
  if (!fx) {                                                                     \
    WARN("skipped: " << kModelDir << " not found (the shared test models)");     \
    return;                                                                      \
  }

std::unique_ptr<CpuBackend> MakeBackend(const Model& m, int64_t blocks = 256) {
  CpuBackendOptions o;
  o.kv_blocks = blocks;
  return std::move(CpuBackend::Create(m, o)).value();
}

SamplingParams Greedy(int32_t max_tokens) {
  SamplingParams s;
  s.temperature = 0.0f;
  s.max_tokens = max_tokens;
  return s;
}

struct Outcome {
  std::vector<int32_t> tokens;
  std::string text;
  GenerateEvent final_event;
};

Outcome Drain(RequestStream& stream) {
  Outcome out;
  GenerateEvent e;
  for (;;) {
    REQUIRE(stream.WaitPop(&e, 60000));
    out.tokens.insert(out.tokens.end(), e.token_ids.begin(), e.token_ids.end());
    out.text += e.text;
    if (e.final) {
      out.final_event = e;
      return out;
    }
  }
}

EngineLimits Limits() {
  EngineLimits l;
  l.scheduler.max_batch_tokens = 96;
  l.scheduler.max_running = 16;
  l.scheduler.max_queue = 64;
  l.scheduler.ingest_chunk_tokens = 40;
  return l;
}

std::vector<int32_t> Encode(const Fixture& fx, const std::string& text) {
  return fx.tokenizer->Encode(text, /*add_bos=*/true);
}

TEST_CASE("engine greedy output equals the reference generation loop") {
  REQUIRE_STORIES();
  auto ref_backend = MakeBackend(*fx->model);
  GenerationRequest req;
  req.prompt = Encode(*fx, "Once upon a time");
  req.sampling = Greedy(40);
  GenerateOptions go;
  go.eos_ids = fx->tokenizer->model().eos_ids;
  go.tokenizer = fx->tokenizer.get();
  auto ref = Generate(*ref_backend, std::span(&req, 1), go);
  REQUIRE(ref.ok());

  auto backend = MakeBackend(*fx->model);
  auto engine = Engine::Start(backend.get(), fx->tokenizer.get(), Limits());
  REQUIRE(engine.ok());
  GenerateJob job;
  job.prompt = req.prompt;
  job.sampling = req.sampling;
  auto stream = (*engine)->Submit(std::move(job));
  REQUIRE(stream.ok());
  Outcome out = Drain(**stream);
  CHECK(out.final_event.status.ok());
  CHECK(out.tokens == (*ref)[0].tokens);
  CHECK(out.text == (*ref)[0].text);
  CHECK(out.final_event.usage.prompt_tokens == static_cast<int64_t>(req.prompt.size()));
  CHECK(out.final_event.usage.completion_tokens == static_cast<int64_t>(out.tokens.size()));
  CHECK(out.final_event.timings.time_to_first_token_s > 0);
  CHECK(out.final_event.timings.total_s >= out.final_event.timings.time_to_first_token_s);
}

TEST_CASE("engine ingestion equals direct ingestion, byte for byte") {
  REQUIRE_STORIES();
  const auto tokens = Encode(*fx, "Lily and Ben went to the park. They saw a big dog and a small "
                                  "cat. The dog was brown and the cat was white. They played with "
                                  "a red ball until the sun went down, then they went home to eat.");
  SqueezeOptions so;
  so.observation_window = 16;
  so.centroid_fraction = 0.1;
  auto direct_backend = MakeBackend(*fx->model);
  auto direct = IngestContext(*direct_backend, tokens, so);
  REQUIRE(direct.ok());

  auto backend = MakeBackend(*fx->model);
  auto engine = std::move(Engine::Start(backend.get(), fx->tokenizer.get(), Limits())).value();
  std::mutex mu;
  std::condition_variable cv;
  std::optional<StatusOr<ContextSnapshot>> result;
  std::vector<IngestStage> stages;
  IngestRequest ir;
  ir.context_id = "park";
  ir.tokens = tokens;
  ir.options = so;
  ir.on_progress = [&](IngestStage s, double) {
    std::lock_guard<std::mutex> lock(mu);
    if (stages.empty() || stages.back() != s) stages.push_back(s);
  };
  ir.on_done = [&](StatusOr<ContextSnapshot> s) {
    std::lock_guard<std::mutex> lock(mu);
    result.emplace(std::move(s));
    cv.notify_all();
  };
  REQUIRE(engine->SubmitIngest(std::move(ir)).ok());
  std::unique_lock<std::mutex> lock(mu);
  REQUIRE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return result.has_value(); }));
  REQUIRE(result->ok());
  CHECK(**result == *direct);  // chunking and interleaving change nothing
  CHECK(stages.front() == IngestStage::kPrefilling);
  CHECK(stages.back() == IngestStage::kCalibrating);
  CHECK(engine->stats().kv_blocks_used == 0);  // the ingestion sequence was freed
}

// A CPU backend that also picks greedy tokens itself (ForwardSample), standing in for the CUDA
// backend's device sampling; counts which entry point the engine used.
class SamplingBackend : public Backend {
 public:
  explicit SamplingBackend(std::unique_ptr<CpuBackend> inner) : inner_(std::move(inner)) {}
  const ModelConfig& config() const override { return inner_->config(); }
  StatusOr<SeqId> AddSequence() override { return inner_->AddSequence(); }
  Status FreeSequence(SeqId seq) override { return inner_->FreeSequence(seq); }
  int64_t SequenceLength(SeqId seq) const override { return inner_->SequenceLength(seq); }
  Status Forward(std::span<const StepInput> batch, float* logits) override {
    ++forward_calls;
    return inner_->Forward(batch, logits);
  }
  bool SamplesInBackend() const override { return true; }
  Status ForwardSample(std::span<const StepInput> batch, std::span<const TokenSampling> sampling,
                       int32_t* tokens) override {
    ++sample_calls;
    if (sampling.size() != batch.size()) return InvalidArgumentError("sampling size");
    const int64_t vocab = config().vocab;
    std::vector<float> logits(batch.size() * vocab);
    SQZ_RETURN_IF_ERROR(inner_->Forward(batch, logits.data()));
    for (size_t i = 0; i < batch.size(); ++i) {
      if (sampling[i].temperature != 0.0f) return UnimplementedError("greedy only");
      const float* row = logits.data() + i * vocab;
      tokens[i] = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
    }
    return OkStatus();
  }
  Status ReadKv(SeqId seq, int layer, int64_t begin, int64_t n, float* k, float* v) override {
    return inner_->ReadKv(seq, layer, begin, n, k, v);
  }
  KvPoolStats Stats() const override { return inner_->Stats(); }

  std::atomic<int64_t> forward_calls{0}, sample_calls{0};

 private:
  std::unique_ptr<CpuBackend> inner_;
};

TEST_CASE("a backend that samples gets ForwardSample, unless a request wants logprobs") {
  REQUIRE_STORIES();
  auto ref_backend = MakeBackend(*fx->model);
  GenerationRequest req;
  req.prompt = Encode(*fx, "The little dog");
  req.sampling = Greedy(24);
  GenerateOptions go;
  go.eos_ids = fx->tokenizer->model().eos_ids;
  go.tokenizer = fx->tokenizer.get();
  auto ref = Generate(*ref_backend, std::span(&req, 1), go);
  REQUIRE(ref.ok());

  SamplingBackend backend(MakeBackend(*fx->model));
  auto engine = std::move(Engine::Start(&backend, fx->tokenizer.get(), Limits())).value();
  GenerateJob job;
  job.prompt = req.prompt;
  job.sampling = req.sampling;
  Outcome out = Drain(*std::move(engine->Submit(job)).value());
  CHECK(out.final_event.status.ok());
  CHECK(out.tokens == (*ref)[0].tokens);
  CHECK(backend.sample_calls > 0);
  CHECK(backend.forward_calls == 0);
  // Log-probabilities need the logits: the same tokens through Forward and the host Sampler.
  job.logprobs = true;
  const int64_t sampled_before = backend.sample_calls;
  auto stream = std::move(engine->Submit(job)).value();
  std::vector<float> logprobs;
  GenerateEvent e;
  std::vector<int32_t> tokens;
  for (;;) {
    REQUIRE(stream->WaitPop(&e, 60000));
    tokens.insert(tokens.end(), e.token_ids.begin(), e.token_ids.end());
    logprobs.insert(logprobs.end(), e.logprobs.begin(), e.logprobs.end());
    if (e.final) break;
  }
  CHECK(tokens == (*ref)[0].tokens);
  CHECK(logprobs.size() == tokens.size());
  CHECK(backend.forward_calls > 0);
  CHECK(backend.sample_calls == sampled_before);
}

TEST_CASE("the engine builds snapshots with the injected builder") {
  REQUIRE_STORIES();
  const auto tokens = Encode(*fx,
                             "Tom had a blue kite. He ran up the hill with it and the wind "
                             "took it high into the sky, over the trees and the river.");
  SqueezeOptions so;
  so.observation_window = 8;
  so.centroid_fraction = 0.1;
  auto backend = MakeBackend(*fx->model);
  EngineLimits limits = Limits();
  std::atomic<int> built{0};
  limits.build_snapshot = [&](const CapturedContext& c, const SqueezeOptions& o,
                              const IngestProgress& p) {
    ++built;
    return BuildSnapshot(c, o, p);
  };
  auto engine = std::move(Engine::Start(backend.get(), fx->tokenizer.get(), limits)).value();
  std::mutex mu;
  std::condition_variable cv;
  std::optional<StatusOr<ContextSnapshot>> result;
  IngestRequest ir;
  ir.context_id = "kite";
  ir.tokens = tokens;
  ir.options = so;
  ir.on_done = [&](StatusOr<ContextSnapshot> s) {
    std::lock_guard<std::mutex> lock(mu);
    result.emplace(std::move(s));
    cv.notify_all();
  };
  REQUIRE(engine->SubmitIngest(std::move(ir)).ok());
  std::unique_lock<std::mutex> lock(mu);
  REQUIRE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return result.has_value(); }));
  REQUIRE(result->ok());
  CHECK(built == 1);
  auto direct_backend = MakeBackend(*fx->model);
  CHECK(**result == IngestContext(*direct_backend, tokens, so).value());
}

TEST_CASE("concurrent requests over several contexts give exactly the one-at-a-time tokens") {
  REQUIRE_STORIES();
  SqueezeOptions so;
  so.observation_window = 8;
  so.centroid_fraction = 0.1;
  auto ingest_backend = MakeBackend(*fx->model);
  std::vector<std::shared_ptr<const ContextSnapshot>> contexts;
  for (const char* text : {"Tim had a toy boat. He took it to the lake and it sailed far away.",
                           "The little bird could not fly. Her mom showed her how to flap her "
                           "wings every day until she flew over the big tree."}) {
    auto snap = IngestContext(*ingest_backend, Encode(*fx, text), so);
    REQUIRE(snap.ok());
    contexts.push_back(std::make_shared<const ContextSnapshot>(std::move(snap).value()));
  }
  const char* prompts[] = {" One day", " The sun", " Then", " She said", " It was", " Mom"};
  std::vector<GenerateJob> jobs;
  for (int i = 0; i < 18; ++i) {
    GenerateJob j;
    j.prompt = fx->tokenizer->Encode(prompts[i % 6], /*add_bos=*/i % 3 == 2);
    j.sampling = Greedy(12 + i % 5);
    if (i % 3 != 2) {
      j.context = contexts[i % 2];
      j.attention.mode = i % 2 ? AttentionMode::kDense : AttentionMode::kSqueezed;
      j.attention.kv_budget = 0.3;
    }
    jobs.push_back(j);
  }
  // All at once.
  auto backend = MakeBackend(*fx->model);
  auto engine = std::move(Engine::Start(backend.get(), fx->tokenizer.get(), Limits())).value();
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const auto& j : jobs) streams.push_back(std::move(engine->Submit(j)).value());
  std::vector<Outcome> together;
  for (auto& s : streams) together.push_back(Drain(*s));
  // One at a time, on a fresh engine.
  auto backend2 = MakeBackend(*fx->model);
  auto engine2 = std::move(Engine::Start(backend2.get(), fx->tokenizer.get(), Limits())).value();
  for (size_t i = 0; i < jobs.size(); ++i) {
    INFO("request " << i);
    Outcome alone = Drain(*std::move(engine2->Submit(jobs[i])).value());
    CHECK(together[i].final_event.status.ok());
    CHECK(together[i].tokens == alone.tokens);
    CHECK(together[i].text == alone.text);
    if (jobs[i].context) {
      const double share = together[i].final_event.usage.context_keys_read;
      if (jobs[i].attention.mode == AttentionMode::kDense) {
        CHECK(share == Approx(1.0));
      } else {
        CHECK(share < 1.0);
      }
      CHECK(together[i].final_event.usage.context_tokens == jobs[i].context->dims.n_tokens);
    }
  }
}

// SQUEEZED selects clusters per block of prompt positions within one Attend call, so a block split
// across two prefill chunks would get two selections and the result would depend on how the batch
// chunked the prompt. Long prompts (several blocks) under a small step budget must still give the
// one-at-a-time tokens and exactly the same share of keys read.
TEST_CASE("squeezed prompts split into prefill chunks give the one-at-a-time selections") {
  REQUIRE_STORIES();
  SqueezeOptions so;
  so.observation_window = 8;
  so.centroid_fraction = 0.1;
  auto ingest_backend = MakeBackend(*fx->model);
  const std::string story =
      "Lily had a red ball. She liked to play with it in the park with her dog Max. One day the "
      "ball rolled into the pond and Max jumped in to get it. Lily laughed and hugged her wet dog.";
  auto snap = IngestContext(*ingest_backend, Encode(*fx, story), so);
  REQUIRE(snap.ok());
  auto context = std::make_shared<const ContextSnapshot>(std::move(snap).value());
  std::vector<GenerateJob> jobs;
  for (int i = 0; i < 7; ++i) {
    GenerateJob j;
    // Prompts of 1 to ~130 tokens: 129 and friends straddle several 16-token blocks.
    const std::vector<int32_t> all = fx->tokenizer->Encode(" " + story + " " + story, false);
    const size_t n = std::vector<size_t>{1, 3, 17, 40, 77, 127, 129}[i];
    j.prompt.assign(all.begin(), all.begin() + std::min(n, all.size()));
    j.sampling = Greedy(5 + i);
    j.context = context;
    j.attention.mode = AttentionMode::kSqueezed;
    j.attention.kv_budget = 0.2;
    j.attention.block_size = 16;
    jobs.push_back(j);
  }
  EngineLimits l = Limits();
  l.scheduler.max_batch_tokens = 45;  // not a multiple of the block: every long prompt is split
  auto backend = MakeBackend(*fx->model);
  auto engine = std::move(Engine::Start(backend.get(), fx->tokenizer.get(), l)).value();
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const auto& j : jobs) streams.push_back(std::move(engine->Submit(j)).value());
  std::vector<Outcome> together;
  for (auto& s : streams) together.push_back(Drain(*s));
  EngineLimits roomy = Limits();
  roomy.scheduler.max_batch_tokens = 512;  // each prompt in one chunk
  auto backend2 = MakeBackend(*fx->model);
  auto engine2 = std::move(Engine::Start(backend2.get(), fx->tokenizer.get(), roomy)).value();
  for (size_t i = 0; i < jobs.size(); ++i) {
    INFO("request " << i << " (" << jobs[i].prompt.size() << " prompt tokens)");
    Outcome alone = Drain(*std::move(engine2->Submit(jobs[i])).value());
    REQUIRE(together[i].final_event.status.ok());
    CHECK(together[i].tokens == alone.tokens);
    CHECK(together[i].final_event.usage.context_keys_read ==
          alone.final_event.usage.context_keys_read);
    CHECK(alone.final_event.usage.context_keys_read < 1.0);
  }
}

TEST_CASE("a cancelled request ends with its reason and frees its KV at the next step") {
  REQUIRE_STORIES();
  auto backend = MakeBackend(*fx->model);
  auto engine = std::move(Engine::Start(backend.get(), fx->tokenizer.get(), Limits())).value();
  GenerateJob j;
  j.prompt = Encode(*fx, "Once upon a time");
  j.sampling = Greedy(400);
  j.sampling.ignore_eos = true;
  auto stream = std::move(engine->Submit(j)).value();
  GenerateEvent e;
  REQUIRE(stream->WaitPop(&e, 30000));
  CHECK(engine->stats().kv_blocks_used > 0);
  stream->Cancel(CancelledError("client went away"));
  Outcome rest = Drain(*stream);
  CHECK(rest.final_event.status.code() == StatusCode::kCancelled);
  CHECK(engine->stats().kv_blocks_used == 0);
}

TEST_CASE("an expired deadline ends the request with DEADLINE_EXCEEDED") {
  REQUIRE_STORIES();
  auto backend = MakeBackend(*fx->model);
  auto engine = std::move(Engine::Start(backend.get(), fx->tokenizer.get(), Limits())).value();
  GenerateJob j;
  j.prompt = Encode(*fx, "Once upon a time");
  j.sampling = Greedy(400);
  j.sampling.ignore_eos = true;
  j.deadline = Clock::now() + std::chrono::milliseconds(20);
  Outcome out = Drain(*std::move(engine->Submit(j)).value());
  CHECK(out.final_event.status.code() == StatusCode::kDeadlineExceeded);
  CHECK(engine->stats().kv_blocks_used == 0);
}

TEST_CASE("a full queue and an oversized request are RESOURCE_EXHAUSTED") {
  REQUIRE_STORIES();
  auto backend = MakeBackend(*fx->model, /*blocks=*/8);  // 128 tokens
  EngineLimits l = Limits();
  l.scheduler.max_running = 1;
  l.scheduler.max_queue = 1;
  auto engine = std::move(Engine::Start(backend.get(), fx->tokenizer.get(), l)).value();
  GenerateJob big;
  big.prompt = Encode(*fx, "Once upon a time");
  big.sampling = Greedy(200);
  auto too_big = engine->Submit(big);
  CHECK(too_big.status().code() == StatusCode::kResourceExhausted);
  CHECK(too_big.status().message().find("KV pool holds 128") != std::string::npos);

  GenerateJob j = big;
  j.sampling = Greedy(100);
  j.sampling.ignore_eos = true;
  auto first = engine->Submit(j);
  REQUIRE(first.ok());
  GenerateEvent e;
  REQUIRE((*first)->WaitPop(&e, 30000));  // running
  auto second = engine->Submit(j);         // waits (queue: 1)
  REQUIRE(second.ok());
  auto third = engine->Submit(j);
  CHECK(third.status().code() == StatusCode::kResourceExhausted);
  (*first)->Cancel(CancelledError("done"));
  (*second)->Cancel(CancelledError("done"));
  Drain(**first);
  Drain(**second);
  engine->StopAccepting();
  CHECK(engine->Submit(j).status().code() == StatusCode::kUnavailable);
}

}  // namespace
}  // namespace sqz
