#include "engine/gguf/gguf_tokenizer.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "engine/gguf/testing/gguf_builder.h"

namespace sqz::gguf {
namespace {

using testing::GgufBuilder;

bool Contains(const Status& s, const std::string& needle) {
  return s.message().find(needle) != std::string::npos;
}

// A small GPT-2-style vocabulary: the 256 byte-alphabet characters (in GPT-2's byte order for
// printable ASCII, enough for these tests), "Ġ" pieces and two control tokens.
GgufBuilder Gpt2Builder() {
  std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>"};
  for (char c = '!'; c <= '~'; ++c) tokens.push_back(std::string(1, c));
  tokens.push_back("\xC4\xA0");    // "Ġ" (space)
  tokens.push_back("\xC4\xA0h");   // "Ġh"
  tokens.push_back("\xC4\xA0hi");  // "Ġhi"
  std::vector<int64_t> types(tokens.size(), 1);
  types[0] = types[1] = 3;
  GgufBuilder b;
  b.SetString("tokenizer.ggml.model", "gpt2");
  b.SetString("tokenizer.ggml.pre", "smollm");
  b.Set("tokenizer.ggml.tokens", Value::StringArray(tokens));
  b.Set("tokenizer.ggml.token_type", Value::IntArray(ValueType::kInt32, types));
  b.Set("tokenizer.ggml.merges", Value::StringArray({"\xC4\xA0 h", "\xC4\xA0h i"}));
  b.SetU32("tokenizer.ggml.bos_token_id", 1);
  b.SetU32("tokenizer.ggml.eos_token_id", 0);
  return b;
}

GgufBuilder LlamaBuilder() {
  std::vector<std::string> tokens = {"<unk>",
                                     "<s>",
                                     "</s>",
                                     "\xE2\x96\x81",
                                     "a",
                                     "\xE2\x96\x81"
                                     "a"};
  GgufBuilder b;
  b.SetString("tokenizer.ggml.model", "llama");
  b.Set("tokenizer.ggml.tokens", Value::StringArray(tokens));
  b.Set("tokenizer.ggml.scores", Value::FloatArray(ValueType::kFloat32, {0, 0, 0, -1, -2, -3}));
  b.Set("tokenizer.ggml.token_type", Value::IntArray(ValueType::kInt32, {2, 3, 3, 1, 1, 1}));
  b.SetU32("tokenizer.ggml.bos_token_id", 1);
  b.SetU32("tokenizer.ggml.eos_token_id", 2);
  b.SetU32("tokenizer.ggml.unknown_token_id", 0);
  return b;
}

TEST_CASE("a gpt2 GGUF tokenizer maps to byte-level BPE with its pre-tokenizer", "[gguf]") {
  auto m = TokenizerModelFromGguf(*Gpt2Builder().Open());
  REQUIRE(m.ok());
  CHECK(m->kind == TokenizerKind::kByteLevelBpe);
  CHECK(m->pre_tokenizer == "smollm");
  CHECK(m->tokens.size() == 2 + 94 + 3);
  CHECK(m->types[0] == TokenType::kControl);
  CHECK(m->types[5] == TokenType::kNormal);
  CHECK(m->merges.size() == 2);
  CHECK(m->bos_id == 1);
  CHECK(m->eos_ids == std::vector<int32_t>{0});
  CHECK(m->unk_id == -1);
  CHECK_FALSE(m->add_bos);  // llama.cpp's default for a non-llama3 gpt2 tokenizer
  CHECK_FALSE(m->add_space_prefix);
  auto tok = Tokenizer::Create(*m);
  REQUIRE(tok.ok());
  CHECK((*tok)->Encode("<|im_start|>a hi", false) ==
        std::vector<int32_t>{1, 2 + ('a' - '!'), 2 + 94 + 2});
}

TEST_CASE("llama3 pre-tokenizers default to adding BOS; the key overrides", "[gguf]") {
  GgufBuilder b = Gpt2Builder();
  b.SetString("tokenizer.ggml.pre", "llama-bpe");
  auto m = TokenizerModelFromGguf(*b.Open());
  REQUIRE(m.ok());
  CHECK(m->add_bos);
  b.Set("tokenizer.ggml.add_bos_token", Value::Bool(false));
  CHECK_FALSE(TokenizerModelFromGguf(*b.Open())->add_bos);
  b.Erase("tokenizer.ggml.pre");  // absent: llama.cpp's "default"
  b.Erase("tokenizer.ggml.add_bos_token");
  m = TokenizerModelFromGguf(*b.Open());
  REQUIRE(m.ok());
  CHECK(m->pre_tokenizer == "default");
  CHECK_FALSE(m->add_bos);
}

TEST_CASE("a llama GGUF tokenizer maps to SentencePiece-style BPE", "[gguf]") {
  GgufBuilder b = LlamaBuilder();
  auto m = TokenizerModelFromGguf(*b.Open());
  REQUIRE(m.ok());
  CHECK(m->kind == TokenizerKind::kSentencePieceBpe);
  CHECK(m->scores.size() == 6);
  CHECK(m->merges.empty());
  CHECK(m->add_bos);
  CHECK(m->add_space_prefix);
  CHECK(m->unk_id == 0);
  auto tok = Tokenizer::Create(*m);
  REQUIRE(tok.ok());
  CHECK((*tok)->Encode("a", true) == std::vector<int32_t>{1, 5});
  b.Set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
  CHECK_FALSE(TokenizerModelFromGguf(*b.Open())->add_space_prefix);
}

TEST_CASE("end-of-turn ids join the EOS list once; -1 means none", "[gguf]") {
  GgufBuilder b = LlamaBuilder();
  b.SetU32("tokenizer.ggml.eot_token_id", 4);
  b.SetU32("tokenizer.ggml.eom_token_id", 2);  // same as EOS: listed once
  b.Set("tokenizer.ggml.padding_token_id", Value::Int(ValueType::kInt32, -1));
  b.SetU32("tokenizer.ggml.unknown_token_id", 0xFFFFFFFFu);
  auto m = TokenizerModelFromGguf(*b.Open());
  REQUIRE(m.ok());
  CHECK(m->eos_ids == std::vector<int32_t>{2, 4});
  CHECK(m->pad_id == -1);
  CHECK(m->unk_id == -1);
}

TEST_CASE("GGUF tokenizer errors name the key", "[gguf]") {
  auto error = [](GgufBuilder b) { return TokenizerModelFromGguf(*b.Open("t.gguf")).status(); };
  GgufBuilder b = LlamaBuilder();
  b.SetString("tokenizer.ggml.model", "bert");
  Status s = error(b);
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(Contains(s, "GGUF t.gguf: tokenizer.ggml.model 'bert' is not supported"));

  b = LlamaBuilder();
  b.Erase("tokenizer.ggml.model");
  CHECK(error(b).code() == StatusCode::kNotFound);
  b = LlamaBuilder();
  b.Erase("tokenizer.ggml.tokens");
  s = error(b);
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(Contains(s, "missing key 'tokenizer.ggml.tokens'"));
  b.Set("tokenizer.ggml.tokens", Value::StringArray({}));
  CHECK(Contains(error(b), "tokenizer.ggml.tokens is empty"));
  b = LlamaBuilder();
  b.Set("tokenizer.ggml.tokens", Value::IntArray(ValueType::kInt32, {1}));
  CHECK(Contains(error(b), "'tokenizer.ggml.tokens' is array of int32, expected array of string"));

  b = LlamaBuilder();
  b.Set("tokenizer.ggml.scores", Value::FloatArray(ValueType::kFloat32, {0}));
  CHECK(Contains(error(b), "tokenizer.ggml.scores has 1 entries for 6 tokens"));
  b = LlamaBuilder();
  b.Set("tokenizer.ggml.token_type", Value::IntArray(ValueType::kInt32, {1, 1}));
  CHECK(Contains(error(b), "tokenizer.ggml.token_type has 2 entries for 6 tokens"));
  b.Set("tokenizer.ggml.token_type", Value::IntArray(ValueType::kInt32, {2, 3, 3, 9, 1, 1}));
  CHECK(Contains(error(b), "token_type of token 3 is 9, not a GGUF token type (0..6)"));

  b = LlamaBuilder();
  b.SetU32("tokenizer.ggml.bos_token_id", 6);
  CHECK(Contains(error(b), "tokenizer.ggml.bos_token_id 6 is outside the vocabulary [0, 6)"));
  b = LlamaBuilder();
  b.SetString("tokenizer.ggml.eos_token_id", "2");
  CHECK(Contains(error(b), "'tokenizer.ggml.eos_token_id' is string, expected an integer"));
  b = LlamaBuilder();
  b.SetU32("tokenizer.ggml.add_bos_token", 1);
  CHECK(Contains(error(b), "'tokenizer.ggml.add_bos_token' is uint32, expected bool"));

  GgufBuilder g = Gpt2Builder();
  g.Erase("tokenizer.ggml.merges");
  s = error(g);
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(Contains(s, "tokenizer.ggml.merges is missing (required for a gpt2 tokenizer)"));
  g = Gpt2Builder();
  g.SetString("tokenizer.ggml.pre", "deepseek-coder");
  s = error(g);
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(Contains(s, "tokenizer.ggml.pre 'deepseek-coder' is not a supported pre-tokenizer"));
  CHECK(Contains(s, "smollm"));
}

TEST_CASE("the chat template is kept verbatim, or empty when absent", "[gguf]") {
  GgufBuilder b = LlamaBuilder();
  CHECK(ChatTemplateFromGguf(*b.Open())->empty());
  b.SetString("tokenizer.chat_template", "{{ x }}\n");
  CHECK(*ChatTemplateFromGguf(*b.Open()) == "{{ x }}\n");
  b.SetU32("tokenizer.chat_template", 3);
  CHECK(ChatTemplateFromGguf(*b.Open()).status().code() == StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sqz::gguf
