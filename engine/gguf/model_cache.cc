#include "engine/gguf/model_cache.h"

#include <cstdlib>

namespace sqz::gguf {

std::string ModelCacheDir() {
  const char* cache = std::getenv("SQZ_MODEL_CACHE");
  if (cache != nullptr && cache[0] != '\0') return cache;
  const char* home = std::getenv("HOME");
  const std::string base = (home != nullptr && home[0] != '\0') ? home : ".";
  return base + "/.cache/squeeze/models";
}

std::string DefaultModelPath() { return ModelCacheDir() + "/" + std::string(kDefaultModelFile); }

}  // namespace sqz::gguf
