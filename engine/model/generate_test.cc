#include "engine/model/generate.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/model/cpu_backend.h"
#include "engine/model/hf_loader.h"

namespace sqz {
namespace {

const std::string kDir = std::string(SQZ_SHARED_DIR) + "/models/stories260K";

struct Stories {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;
  nlohmann::json golden;
};

// nullptr (after a WARN) when the shared model is absent.
std::unique_ptr<Stories> LoadStories() {
  if (!std::filesystem::exists(kDir + "/golden_greedy_outputs.json")) {
    WARN("skipped: " << kDir << " is absent");
    return nullptr;
  }
  auto s = std::make_unique<Stories>();
  auto m = LoadHfModel(kDir);
  REQUIRE(m.ok());
  s->model = std::move(m).value();
  auto t = Tokenizer::FromHfDirectory(kDir);
  REQUIRE(t.ok());
  s->tok = std::move(t).value();
  std::ifstream in(kDir + "/golden_greedy_outputs.json");
  s->golden = nlohmann::json::parse(in);
  return s;
}

SamplingParams Greedy(int32_t max_tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  return p;
}

GenerateOptions Options(const Stories& s, int64_t chunk = 512) {
  GenerateOptions o;
  o.tokenizer = s.tok.get();
  o.eos_ids = {s.tok->eos_id()};
  o.prefill_chunk = chunk;
  return o;
}

TEST_CASE("Generate: stories260K greedy outputs match the golden file") {
  auto s = LoadStories();
  if (!s) return;
  auto backend = CpuBackend::Create(*s->model, {}).value();
  // llama2.c runs a fixed number of positions: prompt + generated = steps.
  const auto& empty = s->golden["empty_prompt_256"];
  const auto ids = empty["ids"].get<std::vector<int32_t>>();
  const auto zoo_ids = s->golden["Zoo_60"]["prompt_ids"].get<std::vector<int32_t>>();
  const auto once_ids = s->golden["Once_upon_a_time_16"]["prompt_ids"].get<std::vector<int32_t>>();
  CHECK(s->tok->Encode("Zoo", true) == zoo_ids);
  CHECK(s->tok->Encode("Once upon a time", true) == once_ids);
  std::vector<GenerationRequest> reqs = {
      {{ids[0]}, Greedy(static_cast<int32_t>(ids.size()) - 1)},
      {zoo_ids, Greedy(60 - static_cast<int32_t>(zoo_ids.size()))},
      {once_ids, Greedy(16)}};
  for (int64_t chunk : {512, 2}) {
    auto out = Generate(*backend, reqs, Options(*s, chunk));
    REQUIRE(out.ok());
    std::vector<int32_t> all = {ids[0]};
    all.insert(all.end(), (*out)[0].tokens.begin(), (*out)[0].tokens.end());
    CHECK(all == ids);
    CHECK((*out)[0].text == empty["text"].get<std::string>());
    CHECK((*out)[0].finish_reason == "length");
    const std::string zoo = "Zoo" + (*out)[1].text;
    INFO(zoo);
    CHECK(zoo.rfind(s->golden["Zoo_60"]["text_prefix"].get<std::string>(), 0) == 0);
    const std::string once = "Once upon a time" + (*out)[2].text;
    INFO(once);
    CHECK(once.find("there was a little girl named Lily") != std::string::npos);
    CHECK((*out)[2].tokens.size() == 16);
    CHECK((*out)[2].prompt_tokens == 5);
  }
  CHECK(backend->Stats().used_blocks == 0);
  CHECK(backend->Stats().sequences == 0);
}

TEST_CASE("Generate: batched sampled requests equal the same requests run alone") {
  auto s = LoadStories();
  if (!s) return;
  auto backend = CpuBackend::Create(*s->model, {}).value();
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 4; ++i) {
    SamplingParams p;
    p.temperature = 0.9f;
    p.top_p = 0.95f;
    p.seed = 100 + i;
    p.max_tokens = 40;
    reqs.push_back({s->tok->Encode(i % 2 ? "Lily" : "The dog", true), p});
  }
  auto together = Generate(*backend, reqs, Options(*s, 3));
  REQUIRE(together.ok());
  for (int i = 0; i < 4; ++i) {
    auto alone = Generate(*backend, {&reqs[i], 1}, Options(*s));
    REQUIRE(alone.ok());
    CHECK((*alone)[0].tokens == (*together)[i].tokens);
    CHECK((*alone)[0].text == (*together)[i].text);
  }
  // Different seeds diverge.
  CHECK((*together)[0].tokens != (*together)[2].tokens);
}

TEST_CASE("Generate: stop strings, stop tokens, EOS and streaming") {
  auto s = LoadStories();
  if (!s) return;
  auto backend = CpuBackend::Create(*s->model, {}).value();
  const auto prompt = s->tok->Encode("Once upon a time", true);
  GenerationRequest base{prompt, Greedy(40)};
  auto plain = Generate(*backend, {&base, 1}, Options(*s));
  REQUIRE(plain.ok());
  const std::string full = (*plain)[0].text;
  REQUIRE(full.find(" Lily") != std::string::npos);

  // A stop string that spans several tokens.
  GenerationRequest stop_str = base;
  stop_str.sampling.stop = {"little girl"};
  std::string streamed;
  GenerateOptions opts = Options(*s);
  opts.on_token = [&](size_t, int32_t, std::string_view text) { streamed += text; };
  auto st = Generate(*backend, {&stop_str, 1}, opts);
  REQUIRE(st.ok());
  CHECK((*st)[0].finish_reason == "stop");
  CHECK((*st)[0].text == full.substr(0, full.find("little girl")));
  CHECK(streamed == (*st)[0].text);

  // A stop token id: generation ends before it.
  GenerationRequest stop_tok = base;
  const int32_t fifth = (*plain)[0].tokens[4];
  stop_tok.sampling.stop_token_ids = {fifth};
  auto sk = Generate(*backend, {&stop_tok, 1}, Options(*s));
  REQUIRE(sk.ok());
  CHECK((*sk)[0].finish_reason == "stop");
  const auto& toks = (*plain)[0].tokens;
  const size_t first = std::find(toks.begin(), toks.end(), fifth) - toks.begin();
  CHECK((*sk)[0].tokens == std::vector<int32_t>(toks.begin(), toks.begin() + first));

  // EOS ends generation unless ignore_eos.
  GenerateOptions eos = Options(*s);
  eos.eos_ids = {fifth};
  auto e1 = Generate(*backend, {&base, 1}, eos);
  REQUIRE(e1.ok());
  CHECK((*e1)[0].tokens.size() == first);
  GenerationRequest ignoring = base;
  ignoring.sampling.ignore_eos = true;
  auto e2 = Generate(*backend, {&ignoring, 1}, eos);
  REQUIRE(e2.ok());
  CHECK((*e2)[0].tokens == toks);
  CHECK((*e2)[0].finish_reason == "length");
  CHECK((*e2)[0].samples.size() == toks.size());
  CHECK((*e2)[0].time_to_first_token_s <= (*e2)[0].total_s);
}

TEST_CASE("Generate: errors") {
  auto s = LoadStories();
  if (!s) return;
  auto backend = CpuBackend::Create(*s->model, CpuBackendOptions{2}).value();
  auto expect = [&](const GenerationRequest& r, const GenerateOptions& o, StatusCode code,
                    const std::string& fragment) {
    auto out = Generate(*backend, {&r, 1}, o);
    REQUIRE_FALSE(out.ok());
    INFO(out.status().ToString());
    CHECK(out.status().code() == code);
    CHECK(out.status().message().find(fragment) != std::string::npos);
    CHECK(backend->Stats().used_blocks == 0);
    CHECK(backend->Stats().sequences == 0);
  };
  GenerationRequest empty{{}, Greedy(4)};
  expect(empty, Options(*s), StatusCode::kInvalidArgument, "request 0: empty prompt");
  GenerationRequest bad{{1}, Greedy(4)};
  bad.sampling.top_p = 2;
  expect(bad, Options(*s), StatusCode::kInvalidArgument, "top_p must be in (0, 1]");
  GenerationRequest stops{{1}, Greedy(4)};
  stops.sampling.stop = {"x"};
  GenerateOptions no_tok;
  expect(stops, no_tok, StatusCode::kInvalidArgument, "stop strings need a tokenizer");
  // 2 blocks = 32 tokens of KV: a 40-token prompt cannot fit.
  GenerationRequest big{std::vector<int32_t>(40, 5), Greedy(4)};
  expect(big, Options(*s), StatusCode::kResourceExhausted, "KV blocks");
  // Generation that runs out of pool midway also reports it and frees everything.
  GenerationRequest grows{{1}, Greedy(100)};
  grows.sampling.ignore_eos = true;
  expect(grows, Options(*s), StatusCode::kResourceExhausted, "KV blocks");
}

}  // namespace
}  // namespace sqz
