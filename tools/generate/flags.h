// A minimal command-line flag parser for the engine-only tools (sqz-generate,
// sqz-make-tiny-model, sqz-bench-model), which must build without CLI11 (e.g. on the GPU
// machine). Flags are "--name value", "--name=value" or, for booleans, "--name".
// Not thread-safe; one per process.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"

namespace sqz::tools {

class Flags {
 public:
  // `booleans`: flags that take no value.
  Flags(std::set<std::string> booleans) : booleans_(std::move(booleans)) {}

  // INVALID_ARGUMENT for a positional argument or a value flag without a value.
  Status Parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) return InvalidArgumentError("unexpected argument \"" + a + "\"");
      a = a.substr(2);
      const auto eq = a.find('=');
      if (eq != std::string::npos) {
        values_[a.substr(0, eq)] = a.substr(eq + 1);
      } else if (booleans_.count(a)) {
        values_[a] = "true";
      } else if (i + 1 < argc) {
        values_[a] = argv[++i];
      } else {
        return InvalidArgumentError("flag --" + a + " needs a value");
      }
    }
    return OkStatus();
  }

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") {
    used_.insert(name);
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  bool Bool(const std::string& name) {
    const std::string v = Get(name, "false");
    return v == "true" || v == "1";
  }
  StatusOr<int64_t> Int(const std::string& name, int64_t fallback) {
    used_.insert(name);
    if (!Has(name)) return fallback;
    const std::string v = Get(name);
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0') {
      return InvalidArgumentError("--" + name + " must be an integer, got \"" + v + "\"");
    }
    return static_cast<int64_t>(x);
  }
  StatusOr<double> Double(const std::string& name, double fallback) {
    used_.insert(name);
    if (!Has(name)) return fallback;
    const std::string v = Get(name);
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0') {
      return InvalidArgumentError("--" + name + " must be a number, got \"" + v + "\"");
    }
    return x;
  }
  // INVALID_ARGUMENT naming the first flag given but never asked for (a typo).
  Status CheckAllUsed() const {
    for (const auto& [name, value] : values_) {
      if (!used_.count(name)) return InvalidArgumentError("unknown flag --" + name);
    }
    return OkStatus();
  }

 private:
  std::set<std::string> booleans_;
  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
};

}  // namespace sqz::tools
