// Test helper: a GGUF file described as editable lists of metadata and f32 tensors, so each test
// can remove or replace one key or tensor of a valid file and check the loader's error.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/check.h"
#include "engine/gguf/gguf_file.h"
#include "engine/gguf/gguf_writer.h"

namespace sqz::gguf::testing {

struct BuilderTensor {
  std::string name;
  std::vector<int64_t> dims;
  uint32_t type = 0;
  std::string data;
};

class GgufBuilder {
 public:
  // Replaces the value of `key`, or appends it.
  void Set(const std::string& key, Value v) {
    for (auto& kv : kv_) {
      if (kv.first == key) {
        kv.second = std::move(v);
        return;
      }
    }
    kv_.emplace_back(key, std::move(v));
  }
  void SetString(const std::string& key, std::string s) { Set(key, Value::String(std::move(s))); }
  void SetU32(const std::string& key, uint32_t v) { Set(key, Value::Uint(ValueType::kUint32, v)); }
  void SetF32(const std::string& key, float v) { Set(key, Value::Float(ValueType::kFloat32, v)); }
  void Erase(const std::string& key) {
    std::erase_if(kv_, [&](const auto& kv) { return kv.first == key; });
  }

  // Replaces or appends an f32 tensor with dims (ggml order) and the given values (or seeded
  // random ones when `values` is empty).
  void SetF32Tensor(const std::string& name, std::vector<int64_t> dims,
                    std::vector<float> values = {}) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    if (values.empty()) {
      std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>()(name)));
      std::normal_distribution<float> dist(0.0f, 0.3f);
      values.resize(n);
      for (float& v : values) v = dist(rng);
    }
    SQZ_CHECK_EQ(static_cast<int64_t>(values.size()), n);
    std::string data(values.size() * 4, '\0');
    std::memcpy(data.data(), values.data(), data.size());
    SetTensor({name, std::move(dims), static_cast<uint32_t>(TensorType::kF32), std::move(data)});
  }
  void SetTensor(BuilderTensor t) {
    EraseTensor(t.name);
    tensors_.push_back(std::move(t));
  }
  void EraseTensor(const std::string& name) {
    std::erase_if(tensors_, [&](const BuilderTensor& t) { return t.name == name; });
  }

  std::string Serialize() const {
    Writer w;
    for (const auto& [k, v] : kv_) w.Add(k, v);
    for (const BuilderTensor& t : tensors_) {
      SQZ_CHECK(w.AddTensor(t.name, t.dims, t.type, t.data).ok()) << t.name;
    }
    return w.Serialize();
  }
  // Writes the file under `dir` as `name` and returns its path.
  std::string WriteTo(const std::string& dir, const std::string& name) const {
    const std::string path = dir + "/" + name;
    const std::string bytes = Serialize();
    auto f = File::FromBytes(bytes);  // must at least be well-formed GGUF
    SQZ_CHECK(f.ok()) << f.status().ToString();
    FILE* out = std::fopen(path.c_str(), "wb");
    SQZ_CHECK(out != nullptr) << path;
    std::fwrite(bytes.data(), 1, bytes.size(), out);
    std::fclose(out);
    return path;
  }
  std::unique_ptr<File> Open(const std::string& name = "test.gguf") const {
    auto f = File::FromBytes(Serialize(), name);
    SQZ_CHECK(f.ok()) << f.status().ToString();
    return std::move(f).value();
  }

 private:
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<BuilderTensor> tensors_;
};

}  // namespace sqz::gguf::testing
