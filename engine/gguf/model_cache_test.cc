#include "engine/gguf/model_cache.h"

#include <catch2/catch.hpp>
#include <cstdlib>
#include <string>

namespace sqz::gguf {
namespace {

// Restores an environment variable when the test ends.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_, old_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

TEST_CASE("the model cache follows SQZ_MODEL_CACHE, then HOME", "[gguf]") {
  {
    ScopedEnv cache("SQZ_MODEL_CACHE", "/models");
    CHECK(ModelCacheDir() == "/models");
    CHECK(DefaultModelPath() == "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
  }
  ScopedEnv cache("SQZ_MODEL_CACHE", "");
  {
    ScopedEnv home("HOME", "/home/u");
    CHECK(ModelCacheDir() == "/home/u/.cache/squeeze/models");
  }
  ScopedEnv home("HOME", nullptr);
  CHECK(ModelCacheDir() == "./.cache/squeeze/models");
}

}  // namespace
}  // namespace sqz::gguf
