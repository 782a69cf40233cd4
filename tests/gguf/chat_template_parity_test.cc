// engine/chat's built-in templates render exactly what Jinja2 renders from the real templates
// (as transformers' apply_chat_template does): SmolLM2's own template from its GGUF, the Llama-2
// and Llama-3 chat templates, a plain ChatML one and a Qwen2-style ChatML one with a default
// system message, on seeded random conversations (tests/gguf/render_chat_templates.py).
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/chat/chat_template.h"
#include "engine/gguf/gguf_file.h"
#include "engine/gguf/gguf_tokenizer.h"
#include "tests/gguf/test_util.h"

namespace sqz::gguf {
namespace {

using json = nlohmann::json;

// Qwen2-Instruct's template shape: a default system message, newlines escaped in the literals.
constexpr char kQwenStyle[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

std::string RandomContent(std::mt19937& rng) {
  static const std::vector<std::string> atoms = {"Hi",
                                                 "what",
                                                 " is",
                                                 " ",
                                                 "  ",
                                                 "\n",
                                                 "\n\n",
                                                 "\t",
                                                 "\r\n",
                                                 "2+2",
                                                 "?",
                                                 "!",
                                                 "\xC3\xA9",
                                                 "\xE4\xB8\xAD",
                                                 "\xF0\x9F\x98\x80",
                                                 "\xC2\xA0",
                                                 "\xE3\x80\x80",
                                                 "\xE2\x80\x83",
                                                 "'",
                                                 "\"",
                                                 "{{ x }}",
                                                 "{% if %}",
                                                 "<|im_end|>",
                                                 "[INST]",
                                                 "<<SYS>>",
                                                 "\\n",
                                                 "a.b",
                                                 ""};
  std::string s;
  const int n = static_cast<int>(rng() % 8);
  for (int k = 0; k < n; ++k) s += atoms[rng() % atoms.size()];
  return s;
}

std::vector<ChatMessage> RandomConversation(std::mt19937& rng, bool valid_llama2) {
  std::vector<ChatMessage> m;
  if (rng() % 2) m.push_back({"system", RandomContent(rng)});
  const int turns = static_cast<int>(rng() % 5);
  for (int t = 0; t < turns; ++t) {
    std::string role = t % 2 == 0 ? "user" : "assistant";
    if (!valid_llama2 && rng() % 3 == 0) role = (rng() % 2) ? "user" : "tool";
    m.push_back({role, RandomContent(rng)});
  }
  return m;
}

TEST_CASE("built-in chat templates equal Jinja2 renderings of the real ones", "[gguf][chat]") {
  const std::string py = testing::VenvPython();
  if (py.empty()) {
    WARN("skipped: no .venv/bin/python");
    return;
  }
  struct Named {
    std::string name;
    ChatTemplate tmpl;
    std::string bos, eos;
  };
  std::vector<Named> templates;
  json spec;
  spec["templates"] = json::object();
  auto add_jinja = [&](const std::string& name, const std::string& source) {
    auto t = DetectChatTemplate(source);
    REQUIRE(t.ok());
    spec["templates"][name] = source;
    Named n;
    n.name = name;
    n.tmpl = *t;
    templates.push_back(std::move(n));
  };
  add_jinja("qwen_style", kQwenStyle);
  const std::string model = testing::FetchedModelPath();
  if (!model.empty()) {
    auto f = File::Open(model);
    REQUIRE(f.ok());
    auto source = ChatTemplateFromGguf(**f);
    REQUIRE(source.ok());
    add_jinja("smollm2", *source);
    CHECK(templates.back().tmpl.default_system ==
          "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  } else {
    WARN("SmolLM2's own template skipped: run scripts/fetch_model.sh");
  }
  auto add_builtin = [&](const std::string& name, ChatTemplateKind kind, std::string bos,
                         std::string eos) {
    Named n;
    n.name = name;
    n.tmpl.kind = kind;
    n.bos = std::move(bos);
    n.eos = std::move(eos);
    templates.push_back(std::move(n));
  };
  add_builtin("chatml", ChatTemplateKind::kChatMl, "", "");
  add_builtin("llama2", ChatTemplateKind::kLlama2, "<s>", "</s>");
  add_builtin("llama3", ChatTemplateKind::kLlama3, "<|begin_of_text|>", "");

  std::mt19937 rng(31337);
  std::vector<std::pair<size_t, std::vector<ChatMessage>>> cases;
  std::vector<bool> gen_flags;
  spec["cases"] = json::array();
  for (size_t t = 0; t < templates.size(); ++t) {
    for (int k = 0; k < 120; ++k) {
      auto messages = RandomConversation(rng, templates[t].name != "llama2" || k % 4 != 0);
      const bool gen = rng() % 2;
      json jm = json::array();
      for (const ChatMessage& m : messages)
        jm.push_back({{"role", m.role}, {"content", m.content}});
      spec["cases"].push_back({{"template", templates[t].name},
                               {"messages", jm},
                               {"add_generation_prompt", gen},
                               {"bos_token", templates[t].bos},
                               {"eos_token", templates[t].eos}});
      cases.emplace_back(t, std::move(messages));
      gen_flags.push_back(gen);
    }
  }
  const std::string in = std::string(SQZ_BINARY_DIR) + "/chat_cases.json";
  const std::string out = std::string(SQZ_BINARY_DIR) + "/chat_rendered.json";
  std::ofstream(in) << spec.dump();
  REQUIRE(testing::Run(py + " " + SQZ_SOURCE_DIR + "/tests/gguf/render_chat_templates.py " + in +
                       " " + out) == 0);
  std::ifstream rf(out);
  const json rendered = json::parse(rf);
  REQUIRE(rendered["outputs"].size() == cases.size());
  int errors = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Named& t = templates[cases[i].first];
    const json& want = rendered["outputs"][i];
    auto got = ApplyChatTemplate(t.tmpl, cases[i].second, gen_flags[i]);
    INFO("case " << i << " template " << t.name << ": " << spec["cases"][i].dump());
    if (want.is_object()) {  // Jinja raised: roles do not alternate
      CHECK_FALSE(got.ok());
      ++errors;
    } else {
      REQUIRE(got.ok());
      CHECK(*got == want.get<std::string>());
    }
  }
  CHECK(errors > 5);  // the invalid Llama-2 conversations were exercised
}

}  // namespace
}  // namespace sqz::gguf
