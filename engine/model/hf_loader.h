// Loads a Hugging Face model directory: config.json plus model.safetensors, or shards listed by
// model.safetensors.index.json. Files are memory mapped; F32/F16/BF16 tensors are converted to the
// fp32 ModelWeights. Every tensor the config implies is checked for presence, shape and dtype;
// tensors the runtime does not use (e.g. rotary_emb.inv_freq) are ignored.
// Thread safety: the functions are reentrant; no shared state.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "engine/model/weights.h"

namespace sqz {

// Reads dir/config.json and the weights. Errors name the file and tensor:
//   NOT_FOUND          missing config.json, weight files, a shard named by the index, or a tensor
//                      ("model.layers.3.self_attn.k_proj.weight not found in ...");
//   INVALID_ARGUMENT   bad JSON (config or index), a shape mismatch ("... has shape [32, 64],
//                      expected [64, 64]"), a malformed safetensors header;
//   UNIMPLEMENTED      unsupported architecture, activation, RoPE scaling or tensor dtype (I64..);
//   DATA_LOSS          a truncated safetensors file.
StatusOr<std::unique_ptr<Model>> LoadHfModel(const std::string& dir);

// Reads a whole small text file (config.json, index); NOT_FOUND if absent.
StatusOr<std::string> ReadTextFile(const std::string& path);

}  // namespace sqz
