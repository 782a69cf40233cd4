#include "engine/chat/chat_template.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace sqz {
namespace {

// SmolLM2-135M-Instruct's template, as its GGUF file carries it.
constexpr std::string_view kSmolLm2Template =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";

std::string Render(const ChatTemplate& t, const std::vector<ChatMessage>& m, bool gen) {
  auto r = ApplyChatTemplate(t, m, gen);
  REQUIRE(r.ok());
  return *r;
}

std::string Render(ChatTemplateKind k, const std::vector<ChatMessage>& m, bool gen) {
  ChatTemplate t;
  t.kind = k;
  return Render(t, m, gen);
}

TEST_CASE("ChatML renders each message and the generation prompt", "[chat]") {
  const std::vector<ChatMessage> m = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", " 2+2? \n"}};
  CHECK(Render(ChatTemplateKind::kChatMl, m, true) ==
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n 2+2? \n<|im_end|>\n"
        "<|im_start|>assistant\n");
  CHECK(Render(ChatTemplateKind::kChatMl, {{"user", "x"}}, false) ==
        "<|im_start|>user\nx<|im_end|>\n");
  CHECK(Render(ChatTemplateKind::kChatMl, {}, true) == "<|im_start|>assistant\n");
  CHECK(Render(ChatTemplateKind::kChatMl, {{"tool", ""}}, false) ==
        "<|im_start|>tool\n<|im_end|>\n");
}

TEST_CASE("SmolLM2's template is ChatML with its default system message", "[chat]") {
  auto t = DetectChatTemplate(kSmolLm2Template);
  REQUIRE(t.ok());
  CHECK(t->kind == ChatTemplateKind::kChatMl);
  CHECK(t->default_system ==
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  CHECK(Render(*t, {{"user", "What is the capital of France?"}}, true) ==
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n");
  // An explicit system message replaces the default; no messages, no default either.
  CHECK(Render(*t, {{"system", "S"}, {"user", "U"}}, false) ==
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
  CHECK(Render(*t, {}, true) == "<|im_start|>assistant\n");
}

TEST_CASE("a ChatML template with an escaped default system message is recognised", "[chat]") {
  auto t = DetectChatTemplate(
      "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful "
      "assistant.<|im_end|>\\n' }}{% endif %}{% for message in messages %}{{'<|im_start|>' + "
      "message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}");
  REQUIRE(t.ok());
  CHECK(t->default_system == "You are a helpful assistant.");
  auto plain = DetectChatTemplate(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
      "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}");
  REQUIRE(plain.ok());
  CHECK(plain->default_system.empty());
}

TEST_CASE("Llama-2 folds the system message into the first turn and strips contents", "[chat]") {
  const std::vector<ChatMessage> m = {{"system", " You are terse. "},
                                      {"user", " Hi \n"},
                                      {"assistant", "Hello. "},
                                      {"user", "Bye"}};
  CHECK(Render(ChatTemplateKind::kLlama2, m, true) ==
        "<s>[INST] <<SYS>>\n You are terse. \n<</SYS>>\n\n Hi [/INST] Hello. </s>"
        "<s>[INST] Bye [/INST]");
  CHECK(Render(ChatTemplateKind::kLlama2, {{"user", "a"}}, false) == "<s>[INST] a [/INST]");
  CHECK(Render(ChatTemplateKind::kLlama2, {{"system", "only"}}, true).empty());
}

TEST_CASE("Llama-2 requires user messages at even positions, as its template", "[chat]") {
  for (const std::vector<ChatMessage>& bad :
       {std::vector<ChatMessage>{{"assistant", "x"}},
        std::vector<ChatMessage>{{"user", "a"}, {"user", "b"}},
        std::vector<ChatMessage>{{"system", "s"}, {"tool", "a"}},
        std::vector<ChatMessage>{{"user", "a"}, {"assistant", "b"}, {"system", "c"}}}) {
    auto r = ApplyChatTemplate(ChatTemplateKind::kLlama2, bad, true);
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("must alternate user/assistant") != std::string::npos);
  }
  CHECK(ApplyChatTemplate(ChatTemplateKind::kLlama2, {}, true).status().message() ==
        "chat template llama2: needs at least one message");
  // Another role at an odd position passes the template's check and renders nothing.
  CHECK(Render(ChatTemplateKind::kLlama2, {{"user", "a"}, {"tool", "t"}, {"user", "b"}}, true) ==
        "<s>[INST] a [/INST]<s>[INST] b [/INST]");
}

TEST_CASE("Llama-3 renders headers, trims contents and adds BOS once", "[chat]") {
  const std::vector<ChatMessage> m = {{"system", "Sys\n"}, {"user", "\t\xE3\x80\x80Q"}};
  CHECK(Render(ChatTemplateKind::kLlama3, m, true) ==
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSys<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
  CHECK(Render(ChatTemplateKind::kLlama3, {{"user", "x"}}, false) ==
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
  // Unicode whitespace counts for trim (U+3000, U+00A0), other characters do not (U+00E9).
  CHECK(Render(ChatTemplateKind::kLlama3, {{"user", "\xC2\xA0\xC3\xA9\xE3\x80\x80"}}, false) ==
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n\xC3\xA9<|eot_id|>");
}

TEST_CASE("templates are recognised from their Jinja strings", "[chat]") {
  auto l3 = DetectChatTemplate(
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
      "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
      "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
      "{% endif %}{{ content }}{% endfor %}");
  REQUIRE(l3.ok());
  CHECK(l3->kind == ChatTemplateKind::kLlama3);
  auto l2 = DetectChatTemplate(
      "{% if messages[0]['role'] == 'system' %}...'<<SYS>>\\n' + system_message + "
      "'\\n<</SYS>>\\n\\n'...{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}");
  REQUIRE(l2.ok());
  CHECK(l2->kind == ChatTemplateKind::kLlama2);

  auto mistral = DetectChatTemplate("{{ bos_token }}{% for m in messages %}[INST] {{ m }}[/INST]");
  CHECK(mistral.status().code() == StatusCode::kUnimplemented);
  CHECK(mistral.status().message().find("unrecognised chat template") != std::string::npos);
  CHECK(mistral.status().message().find("{{ bos_token }}") != std::string::npos);
  auto none = DetectChatTemplate("");
  CHECK(none.status().code() == StatusCode::kUnimplemented);
  CHECK(none.status().message().find("the model has none") != std::string::npos);
}

TEST_CASE("template kinds round-trip through their names", "[chat]") {
  for (ChatTemplateKind k :
       {ChatTemplateKind::kChatMl, ChatTemplateKind::kLlama2, ChatTemplateKind::kLlama3}) {
    auto parsed = ParseChatTemplateKind(ChatTemplateKindName(k));
    REQUIRE(parsed.ok());
    CHECK(*parsed == k);
  }
  auto bad = ParseChatTemplateKind("jinja");
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK(bad.status().message() == "unknown chat template 'jinja' (known: chatml, llama2, llama3)");
}

TEST_CASE("an empty role is rejected by every template", "[chat]") {
  for (ChatTemplateKind k :
       {ChatTemplateKind::kChatMl, ChatTemplateKind::kLlama2, ChatTemplateKind::kLlama3}) {
    auto r = ApplyChatTemplate(k, std::vector<ChatMessage>{{"user", "a"}, {"", "b"}}, true);
    CHECK(r.status().message() == "chat template: message 1 has an empty role");
  }
}

}  // namespace
}  // namespace sqz
