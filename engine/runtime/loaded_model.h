// LoadedModel: everything the server needs of one model, loaded from a Hugging Face directory or
// a .gguf file: the weights and config, the tokenizer, the chat template and a fingerprint.
//
// The fingerprint identifies the model a context's KV cache was computed with: a 64-bit digest of
// the config, every tensor's shape, and the weights' bytes, plus the format version of the digest.
// Contexts stored with another fingerprint are stale (their KV belongs to another model).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "engine/chat/chat_template.h"
#include "engine/model/weights.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz {

struct LoadedModel {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat_template;  // none: only plain prompts are served
  std::string name;    // general.name (GGUF) or the directory's name
  std::string path;
  std::string format;  // "gguf" or "hf"
  uint64_t fingerprint = 0;
};

// Loads `path`: a .gguf file, or a directory with config.json, *.safetensors and tokenizer.json.
// NOT_FOUND when the path does not exist (with a hint to run scripts/fetch_model.sh for the default
// model); the loaders' errors otherwise, naming the file.
StatusOr<LoadedModel> LoadModel(const std::string& path);

// Digest of config, tensor shapes and weights (format version 1). Deterministic across runs.
uint64_t ModelFingerprint(const Model& model);
std::string FingerprintHex(uint64_t fingerprint);

}  // namespace sqz
