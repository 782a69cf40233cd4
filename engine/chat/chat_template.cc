#include "engine/chat/chat_template.h"

namespace sqz {
namespace {

// Whether code point c is whitespace for Python's str.strip() (str.isspace), which the Jinja
// templates' strip() and trim use.
bool IsPySpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// Decodes the UTF-8 character at s[i] (length *len); invalid bytes decode as U+FFFD, length 1.
char32_t DecodeAt(std::string_view s, size_t i, size_t* len) {
  const auto b = static_cast<unsigned char>(s[i]);
  const int n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    *len = 1;
    return 0xFFFD;
  }
  char32_t c = n == 1 ? b : b & (0x7F >> n);
  for (int k = 1; k < n; ++k) {
    const auto cb = static_cast<unsigned char>(s[i + k]);
    if ((cb & 0xC0) != 0x80) {
      *len = 1;
      return 0xFFFD;
    }
    c = (c << 6) | (cb & 0x3F);
  }
  *len = static_cast<size_t>(n);
  return c;
}

// Python's str.strip() on UTF-8 text.
std::string_view Strip(std::string_view s) {
  size_t b = 0, len = 0;
  while (b < s.size() && IsPySpace(DecodeAt(s, b, &len))) b += len;
  size_t e = s.size();
  while (e > b) {
    size_t start = e - 1;  // back to the lead byte of the last character
    while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && e - start < 4) {
      --start;
    }
    if (!IsPySpace(DecodeAt(s, start, &len)) || start + len != e) break;
    e = start;
  }
  return s.substr(b, e - b);
}

Status CheckRoles(std::span<const ChatMessage> messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role.empty()) {
      return InvalidArgumentError("chat template: message " + std::to_string(i) +
                                  " has an empty role");
    }
  }
  return OkStatus();
}

std::string ChatMl(const ChatTemplate& t, std::span<const ChatMessage> messages, bool gen) {
  std::string out;
  if (!t.default_system.empty() && (messages.empty() || messages[0].role != "system")) {
    // SmolLM2 / Qwen2 insert it only inside their message loop, i.e. when there are messages.
    if (!messages.empty()) out += "<|im_start|>system\n" + t.default_system + "<|im_end|>\n";
  }
  for (const ChatMessage& m : messages) {
    out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  }
  if (gen) out += "<|im_start|>assistant\n";
  return out;
}

StatusOr<std::string> Llama2(std::span<const ChatMessage> messages) {
  if (messages.empty()) {  // the Jinja template reads messages[0]
    return InvalidArgumentError("chat template llama2: needs at least one message");
  }
  std::string system;
  bool has_system = false;
  if (!messages.empty() && messages[0].role == "system") {
    has_system = true;
    system = messages[0].content;
    messages = messages.subspan(1);
  }
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    // As the Jinja template: a user message must sit at an even index, and only there; other
    // roles at odd indices pass the check and render nothing.
    if ((m.role == "user") != (i % 2 == 0)) {
      return InvalidArgumentError(
          "chat template llama2: conversation roles must alternate user/assistant/user/... after "
          "an optional system message; message " +
          std::to_string(i + (has_system ? 1 : 0)) + " has role '" + m.role + "'");
    }
    if (m.role != "user" && m.role != "assistant") continue;
    std::string content = m.content;
    if (i == 0 && has_system) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
    const bool user = m.role == "user";
    out += user ? "<s>[INST] " : " ";
    out += Strip(content);
    out += user ? " [/INST]" : " </s>";
  }
  return out;
}

std::string Llama3(std::span<const ChatMessage> messages, bool gen) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += "<|begin_of_text|>";
    out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" +
           std::string(Strip(messages[i].content)) + "<|eot_id|>";
  }
  if (gen) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// Undoes the escapes a Jinja string literal may hold (\n, \t, \', \", \\).
std::string UnescapeLiteral(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

// The default system message of a ChatML template: the text of a literal
// '<|im_start|>system\n...<|im_end|>' (newline written raw or escaped), or "".
std::string ChatMlDefaultSystem(std::string_view jinja) {
  for (std::string_view head : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    size_t pos = 0;
    while ((pos = jinja.find(head, pos)) != std::string_view::npos) {
      const size_t begin = pos + head.size();
      const size_t end = jinja.find("<|im_end|>", begin);
      if (end == std::string_view::npos) break;
      const std::string_view text = jinja.substr(begin, end - begin);
      // A literal, not template code ("... + message['content'] + ...").
      if (!text.empty() && text.find_first_of("{}'\"+") == std::string_view::npos) {
        return UnescapeLiteral(text);
      }
      pos = begin;
    }
  }
  return "";
}

}  // namespace

std::string_view ChatTemplateKindName(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::kChatMl:
      return "chatml";
    case ChatTemplateKind::kLlama2:
      return "llama2";
    case ChatTemplateKind::kLlama3:
      return "llama3";
  }
  return "unknown";
}

StatusOr<ChatTemplateKind> ParseChatTemplateKind(std::string_view name) {
  for (ChatTemplateKind k :
       {ChatTemplateKind::kChatMl, ChatTemplateKind::kLlama2, ChatTemplateKind::kLlama3}) {
    if (name == ChatTemplateKindName(k)) return k;
  }
  return InvalidArgumentError("unknown chat template '" + std::string(name) +
                              "' (known: chatml, llama2, llama3)");
}

StatusOr<ChatTemplate> DetectChatTemplate(std::string_view jinja) {
  ChatTemplate t;
  if (jinja.find("<|im_start|>") != std::string_view::npos) {
    t.kind = ChatTemplateKind::kChatMl;
    t.default_system = ChatMlDefaultSystem(jinja);
    return t;
  }
  if (jinja.find("<|start_header_id|>") != std::string_view::npos) {
    t.kind = ChatTemplateKind::kLlama3;
    return t;
  }
  if (jinja.find("[INST]") != std::string_view::npos &&
      jinja.find("<<SYS>>") != std::string_view::npos) {
    t.kind = ChatTemplateKind::kLlama2;
    return t;
  }
  std::string head(jinja.substr(0, 80));
  return UnimplementedError(
      jinja.empty() ? std::string("no chat template: the model has none; choose one in the config")
                    : "unrecognised chat template (supported: ChatML, Llama-2, Llama-3): \"" +
                          head + (jinja.size() > 80 ? "...\"" : "\""));
}

StatusOr<std::string> ApplyChatTemplate(const ChatTemplate& tmpl,
                                        std::span<const ChatMessage> messages,
                                        bool add_generation_prompt) {
  SQZ_RETURN_IF_ERROR(CheckRoles(messages));
  switch (tmpl.kind) {
    case ChatTemplateKind::kChatMl:
      return ChatMl(tmpl, messages, add_generation_prompt);
    case ChatTemplateKind::kLlama2:
      return Llama2(messages);
    case ChatTemplateKind::kLlama3:
      return Llama3(messages, add_generation_prompt);
  }
  return InvalidArgumentError("unknown chat template kind");
}

StatusOr<std::string> ApplyChatTemplate(ChatTemplateKind kind,
                                        std::span<const ChatMessage> messages,
                                        bool add_generation_prompt) {
  ChatTemplate t;
  t.kind = kind;
  return ApplyChatTemplate(t, messages, add_generation_prompt);
}

}  // namespace sqz
