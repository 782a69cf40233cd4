// The default model (SmolLM2-135M-Instruct Q4_1, fetched by scripts/fetch_model.sh) through
// engine/gguf: its tokenizer equals the gguf package's view of the vocabulary and encodes text as
// derived by hand from the GPT-2 byte-level rules; the model loads, and greedy decoding over its
// ChatML template answers sensibly. Skips with a message when the model was not fetched.
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/chat/chat_template.h"
#include "engine/gguf/gguf_model.h"
#include "engine/gguf/gguf_tokenizer.h"
#include "engine/model/cpu_backend.h"
#include "engine/model/generate.h"
#include "tests/gguf/test_util.h"

namespace sqz::gguf {
namespace {

std::string Hex(std::string_view s) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

// Loads the tokenizer model from the fetched GGUF (or returns false: skip).
bool LoadTokenizer(std::unique_ptr<Tokenizer>* tok, TokenizerModel* model = nullptr) {
  const std::string path = testing::FetchedModelPath();
  if (path.empty()) {
    WARN("skipped: the default model is not fetched (run scripts/fetch_model.sh)");
    return false;
  }
  auto f = File::Open(path);
  REQUIRE(f.ok());
  auto m = TokenizerModelFromGguf(**f);
  REQUIRE(m.ok());
  if (model) *model = *m;
  auto t = Tokenizer::Create(*m);
  REQUIRE(t.ok());
  *tok = std::move(t).value();
  return true;
}

TEST_CASE("SmolLM2's vocabulary equals the gguf package's reading", "[gguf][smollm2]") {
  std::unique_ptr<Tokenizer> tok;
  TokenizerModel m;
  if (!LoadTokenizer(&tok, &m)) return;
  const std::string py = testing::VenvPython();
  if (py.empty()) {
    WARN("skipped: no .venv/bin/python");
    return;
  }
  const std::string out = std::string(SQZ_BINARY_DIR) + "/smollm2_vocab.json";
  REQUIRE(testing::Run(py + " " + SQZ_SOURCE_DIR + "/tests/gguf/dump_gguf_vocab.py " +
                       testing::FetchedModelPath() + " " + out) == 0);
  std::ifstream f(out);
  const nlohmann::json j = nlohmann::json::parse(f);
  CHECK(j["model"] == Hex("gpt2"));
  CHECK(j["pre"] == Hex("smollm"));
  REQUIRE(j["tokens"].size() == m.tokens.size());
  REQUIRE(m.tokens.size() == 49152);
  for (size_t i = 0; i < m.tokens.size(); ++i) {
    REQUIRE(j["tokens"][i] == Hex(m.tokens[i]));
    REQUIRE(j["token_type"][i].get<int>() == static_cast<int>(m.types[i]));
  }
  REQUIRE(j["merges"].size() == m.merges.size());
  for (size_t i = 0; i < m.merges.size(); ++i) REQUIRE(j["merges"][i] == Hex(m.merges[i]));
  CHECK(j["scores"].is_null());
  CHECK(m.scores.empty());
  CHECK(m.bos_id == j["bos_token_id"].get<int>());
  CHECK(m.eos_ids == std::vector<int32_t>{j["eos_token_id"].get<int32_t>()});
  CHECK(m.unk_id == j["unknown_token_id"].get<int>());
  CHECK(m.pad_id == j["padding_token_id"].get<int>());
  CHECK(m.add_bos == j["add_bos_token"].get<bool>());
  CHECK(m.kind == TokenizerKind::kByteLevelBpe);
  CHECK(m.pre_tokenizer == "smollm");
}

TEST_CASE("SmolLM2 encodes text as the byte-level BPE rules say", "[gguf][smollm2]") {
  std::unique_ptr<Tokenizer> tok;
  if (!LoadTokenizer(&tok)) return;
  struct Case {
    std::string text;
    std::vector<std::string> pieces;  // derived by hand: GPT-2 regex, digits split one by one
    std::vector<int32_t> ids;         // those pieces' ids in the vocabulary
  };
  const std::vector<Case> cases = {
      {"Hello, world!", {"Hello", ",", "\xC4\xA0world", "!"}, {19556, 28, 905, 17}},
      {"What is the capital of France?",
       {"What", "\xC4\xA0is", "\xC4\xA0the",
        "\xC4\xA0"
        "capital",
        "\xC4\xA0of",
        "\xC4\xA0"
        "France",
        "?"},
       {1780, 314, 260, 3575, 282, 4649, 47}},
      {"2024", {"2", "0", "2", "4"}, {34, 32, 34, 36}},  // \p{N} one by one (smollm)
      {"a 123", {"a", "\xC4\xA0", "1", "2", "3"}, {81, 216, 33, 34, 35}},
      {"a  b",
       {"a", "\xC4\xA0",
        "\xC4\xA0"
        "b"},
       {81, 216, 278}},  // \s+(?!\S) keeps one space
      {"The cat\n\n",
       {"The",
        "\xC4\xA0"
        "cat",
        "\xC4\x8A\xC4\x8A"},
       {504, 2644, 1116}},
      {"\xC3\xA9", {"\xC3\x83\xC2\xA9"}, {2756}},  // U+00E9 = bytes C3 A9 -> "Ã©"
      {"<|im_start|>user\nHi<|im_end|>\n",
       {"<|im_start|>", "user", "\xC4\x8A", "Hi", "<|im_end|>", "\xC4\x8A"},
       {1, 4093, 198, 26843, 2, 198}},
  };
  for (const Case& c : cases) {
    INFO(c.text);
    const std::vector<int32_t> ids = tok->Encode(c.text, false, true);
    std::vector<std::string> pieces;
    for (int32_t id : ids) pieces.emplace_back(tok->Piece(id));
    CHECK(pieces == c.pieces);
    CHECK(ids == c.ids);
    CHECK(tok->Decode(ids) == c.text);
  }
  // Without parse_special, control-token text is ordinary text.
  CHECK(tok->Encode("<|im_end|>", false, false).size() > 1);
  CHECK(tok->IsEos(2));
  CHECK(tok->Piece(2) == "<|im_end|>");
}

TEST_CASE("SmolLM2 decode(encode(s)) == s on seeded random text", "[gguf][smollm2]") {
  std::unique_ptr<Tokenizer> tok;
  if (!LoadTokenizer(&tok)) return;
  const std::vector<std::string> atoms = {"a",
                                          "Z",
                                          "the",
                                          " ",
                                          "  ",
                                          "\t",
                                          "\n",
                                          "\r\n",
                                          "0",
                                          "42",
                                          "3.14",
                                          "'s",
                                          "'ll",
                                          "!",
                                          "?",
                                          "\xC3\xA9",
                                          "\xE4\xB8\xAD\xE6\x96\x87",
                                          "\xF0\x9F\x98\x80",
                                          "\xD0\x9F\xD1\x80\xD0\xB8",
                                          "<|im_start|>",
                                          "<|endoftext|>",
                                          "\xE2\x80\x94",
                                          "(",
                                          ")",
                                          "{",
                                          "}",
                                          "#",
                                          "\\"};
  std::mt19937 rng(2025);
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    const int n = 1 + static_cast<int>(rng() % 24);
    for (int k = 0; k < n; ++k) s += atoms[rng() % atoms.size()];
    REQUIRE(tok->Decode(tok->Encode(s, false, true)) == s);
    REQUIRE(tok->Decode(tok->Encode(s, false, false)) == s);
  }
}

TEST_CASE("SmolLM2 loads and answers a question with greedy decoding", "[gguf][smollm2]") {
  const std::string path = testing::FetchedModelPath();
  if (path.empty()) {
    WARN("skipped: the default model is not fetched (run scripts/fetch_model.sh)");
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto g = LoadGgufModel(path);
  REQUIRE(g.ok());
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("loaded " << path << " in " << load_s << " s");
  const ModelConfig& c = g->model->config;
  CHECK(c.architecture == "llama");
  CHECK(c.layers == 30);
  CHECK(c.hidden == 576);
  CHECK(c.intermediate == 1536);
  CHECK(c.q_heads == 9);
  CHECK(c.kv_heads == 3);
  CHECK(c.head_dim == 64);
  CHECK(c.vocab == 49152);
  CHECK(c.max_positions == 8192);
  CHECK(c.rope.theta == 100000.0f);
  CHECK(c.rms_eps == 1e-5f);
  CHECK(c.tie_embeddings);
  CHECK(c.ParameterCount() == 134515008);

  auto tmpl = DetectChatTemplate(g->chat_template);
  REQUIRE(tmpl.ok());
  CHECK(tmpl->kind == ChatTemplateKind::kChatMl);
  CHECK(tmpl->default_system ==
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  auto tok = Tokenizer::Create(g->tokenizer);
  REQUIRE(tok.ok());
  const std::vector<ChatMessage> chat = {{"user", "What is the capital of France?"}};
  auto text = ApplyChatTemplate(*tmpl, chat, true);
  REQUIRE(text.ok());
  GenerationRequest req;
  req.prompt = (*tok)->Encode(*text, false, true);
  CHECK(req.prompt.front() == 1);  // <|im_start|>
  req.sampling.temperature = 0;
  req.sampling.max_tokens = 12;
  auto backend = CpuBackend::Create(*g->model, CpuBackendOptions{});
  REQUIRE(backend.ok());
  GenerateOptions options;
  options.tokenizer = tok->get();
  options.eos_ids = g->tokenizer.eos_ids;
  auto out = Generate(**backend, {&req, 1}, options);
  REQUIRE(out.ok());
  WARN("answer: \"" << (*out)[0].text << "\" (" << (*out)[0].finish_reason << ")");
  CHECK((*out)[0].text.find("Paris") != std::string::npos);
}

}  // namespace
}  // namespace sqz::gguf
