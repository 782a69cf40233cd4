// Loads a Llama-family model from a GGUF file: ModelConfig from the {arch}.* metadata, fp32
// ModelWeights from the tensors (dequantized at load), the TokenizerModel and the chat template.
//
// Architectures: "llama" (Llama-2/3, Mistral and SmolLM2 as llama.cpp converts them) and "qwen2"
// (q/k/v biases). llama.cpp's converter permutes the rows of attn_q and attn_k of "llama" files
// for its interleaved RoPE (within each head, row i * 2 + j holds Hugging Face row j * d/2 + i);
// the loader undoes this, so ModelWeights hold the Hugging Face rotate_half layout that the
// runtime expects. qwen2 files are not permuted (llama.cpp runs them with NeoX RoPE).
//
// Metadata read ({arch} = general.architecture): embedding_length, feed_forward_length,
// block_count, context_length, attention.head_count, attention.head_count_kv (default: head
// count), attention.key_length / value_length (default: embedding_length / head_count),
// attention.layer_norm_rms_epsilon, rope.freq_base (default 10000), rope.dimension_count (must be
// the head size: partial rotary is not supported), rope.scaling.type "none" / "linear" with
// rope.scaling.factor (or the older rope.scale_linear), vocab_size (default: token count).
// A rope_freqs.weight tensor (Llama-3.1+ files) is matched against llama3 RoPE scaling.
//
// Ownership: the returned GgufModel owns everything; the File is closed once loading returns.
// Thread safety: reentrant; no shared state.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "engine/gguf/gguf_file.h"
#include "engine/model/weights.h"
#include "engine/tokenizer/tokenizer.h"

namespace sqz::gguf {

struct GgufModel {
  std::unique_ptr<Model> model;  // config + fp32 weights (never null on success)
  TokenizerModel tokenizer;      // pass to Tokenizer::Create
  std::string chat_template;     // tokenizer.chat_template, "" when absent
  std::string name;              // general.name, "" when absent
};

// Config from metadata, validated (ModelConfig::Validate). Errors: UNIMPLEMENTED for another
// architecture, partial rotary or a RoPE scaling type we lack; NOT_FOUND for a missing required
// key; INVALID_ARGUMENT for mistyped or inconsistent values.
StatusOr<ModelConfig> ModelConfigFromGguf(const File& file);

// Weights for `config` (from ModelConfigFromGguf on the same file). Every tensor is checked:
// NOT_FOUND names a missing tensor, INVALID_ARGUMENT a shape mismatch ("tensor
// 'blk.3.attn_k.weight' has dims [576, 128], expected [576, 192] (ggml order)"), UNIMPLEMENTED a
// type we cannot dequantize.
StatusOr<ModelWeights> ModelWeightsFromGguf(const File& file, const ModelConfig& config);

// Open + config + weights + tokenizer + chat template. Errors as above and as File::Open and
// TokenizerModelFromGguf; the message names the file.
StatusOr<GgufModel> LoadGgufModel(const std::string& path);

}  // namespace sqz::gguf
