// Helpers shared by the tests in tests/gguf: locating the fetched default model and the test
// Python, and running a command.
#pragma once

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/gguf/model_cache.h"

namespace sqz::gguf::testing {

inline bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The default model when scripts/fetch_model.sh has fetched it (SQZ_GGUF_MODEL overrides), or "".
inline std::string FetchedModelPath() {
  const char* env = std::getenv("SQZ_GGUF_MODEL");
  const std::string path = (env && env[0]) ? env : DefaultModelPath();
  return FileExists(path) ? path : "";
}

// The repository's test Python (.venv with numpy and gguf), or "".
inline std::string VenvPython() {
  const std::string py = std::string(SQZ_SOURCE_DIR) + "/.venv/bin/python";
  return FileExists(py) ? py : "";
}

// Runs `command` through the shell; returns its exit status (-1 when it could not run).
inline int Run(const std::string& command) {
  const int rc = std::system(command.c_str());
  return (rc != -1 && WIFEXITED(rc)) ? WEXITSTATUS(rc) : -1;
}

}  // namespace sqz::gguf::testing
