// Writes models in the Hugging Face layout that LoadHfModel reads (config.json + safetensors,
// optionally sharded with model.safetensors.index.json), and makes seeded random weights. Used by
// sqz-make-tiny-model, the loader tests and the numpy-reference test.
// Thread safety: reentrant; no shared state.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "engine/model/safetensors.h"
#include "engine/model/weights.h"

namespace sqz {

// config.json text for `config` (model_type, sizes, rope_theta, rope_scaling, attention_bias,
// tie_word_embeddings, token ids, torch_dtype). ParseHfConfig(HfConfigJson(c)) reproduces c.
std::string HfConfigJson(const ModelConfig& config);

// Writes dir/config.json and the weights as `dtype` (F32, F16 or BF16): one model.safetensors when
// shards == 1, else model-0000i-of-0000n.safetensors plus model.safetensors.index.json (layers
// spread over the shards). dir must exist. INVALID_ARGUMENT for weights that fail Validate or
// shards < 1; INTERNAL when a file cannot be written.
Status SaveHfModel(const Model& model, const std::string& dir, TensorDType dtype, int shards = 1);

// Seeded random weights for `config` (deterministic for a seed on every platform): Linear weights
// and biases ~ uniform(-a, a) with a = sqrt(3 / in_features) (unit-variance outputs), embeddings
// ~ uniform(-1, 1), norm weights ~ 1 + uniform(-0.1, 0.1). lm_head is filled unless tied.
ModelWeights RandomWeights(const ModelConfig& config, uint64_t seed);

}  // namespace sqz
