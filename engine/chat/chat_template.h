// Chat templates without a Jinja engine: the three prompt formats Squeeze's models use, built in,
// and recognition of which one a model's Jinja template string (tokenizer.chat_template in GGUF,
// tokenizer_config.json's chat_template) implements.
//
//   kChatMl  "<|im_start|>{role}\n{content}<|im_end|>\n" per message; generation prompt
//            "<|im_start|>assistant\n". SmolLM2, Qwen2. A template may insert a default system
//            message when the conversation has none (SmolLM2, Qwen2 do): ChatTemplate keeps it.
//   kLlama2  "<s>[INST] {user} [/INST] {assistant} </s><s>[INST] ..." with the system message
//            folded into the first user turn as "<<SYS>>\n{system}\n<</SYS>>\n\n"; contents are
//            stripped of surrounding whitespace; after an optional system message, user messages
//            must be exactly those at even positions (as the Jinja template checks: a message
//            with another role at an odd position renders nothing). The generation prompt is
//            implicit (after "[/INST]").
//   kLlama3  "<|begin_of_text|>" then "<|start_header_id|>{role}<|end_header_id|>\n\n{content}
//            <|eot_id|>" per message (content trimmed); generation prompt
//            "<|start_header_id|>assistant<|end_header_id|>\n\n".
// Outputs match what Hugging Face transformers renders from the corresponding Jinja templates
// (tests/gguf/chat_template_parity_test renders them with Jinja2). The BOS text, where a format has
// one, is part of the output: encode it with add_bos=false and parse_special=true. Contents are not
// escaped: a message that contains control-token text produces those tokens when parsed with
// parse_special (as with transformers).
//
// Thread safety: pure functions.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "common/status.h"

namespace sqz {

enum class ChatTemplateKind { kChatMl, kLlama2, kLlama3 };

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (ChatML and Llama-3 also accept others)
  std::string content;
};

struct ChatTemplate {
  ChatTemplateKind kind = ChatTemplateKind::kChatMl;
  // kChatMl only: system message inserted before the first message when that one is not a system
  // message; "" inserts nothing.
  std::string default_system;
};

// "chatml", "llama2", "llama3".
std::string_view ChatTemplateKindName(ChatTemplateKind kind);
// Inverse of ChatTemplateKindName (for config files). INVALID_ARGUMENT listing the names otherwise.
StatusOr<ChatTemplateKind> ParseChatTemplateKind(std::string_view name);

// Recognises a Jinja chat template string: "<|im_start|>" -> kChatMl (with the default system
// message if the template inserts one), "<|start_header_id|>" -> kLlama3, "[INST]" with
// "<<SYS>>" -> kLlama2. UNIMPLEMENTED (quoting the template's start) for anything else, including
// an empty string.
StatusOr<ChatTemplate> DetectChatTemplate(std::string_view jinja);

// Renders `messages`. INVALID_ARGUMENT for an empty role, and for kLlama2 when there are no
// messages or user messages are not exactly those at even positions after an optional leading
// system message.
StatusOr<std::string> ApplyChatTemplate(const ChatTemplate& tmpl,
                                        std::span<const ChatMessage> messages,
                                        bool add_generation_prompt);
// Same with no default system message.
StatusOr<std::string> ApplyChatTemplate(ChatTemplateKind kind,
                                        std::span<const ChatMessage> messages,
                                        bool add_generation_prompt);

}  // namespace sqz
