// Our dequantization equals the gguf Python package's (gguf.quants.dequantize), bit for bit, on
// real blocks of the default model and on generated blocks of every type we support
// (tests/gguf/make_dequant_fixtures.py writes the cases).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "engine/gguf/dequantize.h"
#include "engine/gguf/gguf_file.h"
#include "tests/gguf/test_util.h"

namespace sqz::gguf {
namespace {

constexpr int kAllTypes = 13;  // F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K..Q6_K

TEST_CASE("dequantization matches the gguf package bit for bit", "[gguf][parity]") {
  const std::string py = testing::VenvPython();
  if (py.empty()) {
    WARN("skipped: no .venv/bin/python (run scripts/install_deps.sh)");
    return;
  }
  const std::string model = testing::FetchedModelPath();
  if (model.empty()) WARN("real-model cases skipped: run scripts/fetch_model.sh");
  const std::string out = std::string(SQZ_BINARY_DIR) + "/dequant_fixtures.gguf";
  const std::string cmd = py + " " + SQZ_SOURCE_DIR +
                          "/tests/gguf/make_dequant_fixtures.py --out " + out +
                          (model.empty() ? "" : " --model " + model);
  REQUIRE(testing::Run(cmd) == 0);
  auto file = File::Open(out);
  REQUIRE(file.ok());
  const File& f = **file;

  std::set<uint32_t> types, real_types;
  int cases = 0;
  for (const TensorInfo& q : f.tensors()) {
    const std::string& name = q.name;
    if (name.size() < 2 || name.substr(name.size() - 2) != ".q") continue;
    const std::string base = name.substr(0, name.size() - 2);
    const TensorInfo* ref = f.FindTensor(base + ".ref");
    REQUIRE(ref != nullptr);
    REQUIRE(ref->n_elements == q.n_elements);
    auto got = DequantizeTensor(q);
    REQUIRE(got.ok());
    // Bitwise: -0.0 vs 0.0 and NaN payloads would show up here.
    std::vector<float> want(ref->n_elements);
    std::memcpy(want.data(), ref->data, want.size() * 4);
    int64_t mismatches = 0, first = -1;
    for (int64_t i = 0; i < q.n_elements; ++i) {
      uint32_t a, b;
      std::memcpy(&a, &(*got)[i], 4);
      std::memcpy(&b, &want[i], 4);
      if (a != b) {
        if (first < 0) first = i;
        ++mismatches;
      }
    }
    INFO(base << ": first mismatch at " << first << ": " << (first >= 0 ? (*got)[first] : 0)
              << " vs " << (first >= 0 ? want[first] : 0));
    CHECK(mismatches == 0);
    types.insert(q.type);
    if (base.rfind("real/", 0) == 0) real_types.insert(q.type);
    ++cases;
  }
  CHECK(cases >= 4 * 10);
  CHECK(types.size() == kAllTypes);
  if (model.empty()) return;

  // The default file holds F32, Q4_1 and Q8_0 tensors: each was compared on real blocks.
  CHECK(real_types == std::set<uint32_t>{static_cast<uint32_t>(TensorType::kF32),
                                         static_cast<uint32_t>(TensorType::kQ4_1),
                                         static_cast<uint32_t>(TensorType::kQ8_0)});
  // Every tensor of the model, whole: sums of values and squares equal the package's.
  auto names = f.GetStringArray("fixtures.real_tensor_names");
  REQUIRE(names.ok());
  const TensorInfo* sums = f.FindTensor("fixtures.real_tensor_sums");
  REQUIRE(sums != nullptr);
  REQUIRE(sums->n_elements == static_cast<int64_t>(2 * names->size()));
  auto model_file = File::Open(model);
  REQUIRE(model_file.ok());
  REQUIRE((*model_file)->tensors().size() == names->size());
  for (size_t k = 0; k < names->size(); ++k) {
    const TensorInfo* t = (*model_file)->FindTensor((*names)[k]);
    REQUIRE(t != nullptr);
    auto v = DequantizeTensor(*t);
    REQUIRE(v.ok());
    double sum = 0, sq = 0;
    for (float x : *v) {
      sum += x;
      sq += static_cast<double>(x) * x;
    }
    double want[2];
    std::memcpy(want, sums->data + 16 * k, 16);
    INFO((*names)[k]);
    CHECK(std::abs(sum - want[0]) <= 1e-9 * std::max(1.0, std::sqrt(want[1] * t->n_elements)));
    CHECK(std::abs(sq - want[1]) <= 1e-9 * std::max(1.0, want[1]));
  }
}

}  // namespace
}  // namespace sqz::gguf
