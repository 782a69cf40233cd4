// GGUF writer (version 3, little-endian): builds a file image in memory. Used to export models
// and, in tests, to make small GGUF files, well-formed or deliberately broken.
//
// Ownership: a Writer owns copies of everything added. Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "engine/gguf/gguf_file.h"

namespace sqz::gguf {

class Writer {
 public:
  // `alignment` is written as general.alignment when it is not the default 32.
  explicit Writer(uint64_t alignment = 32);

  // Metadata pairs, written in the order added. Keys are not checked for duplicates (tests write
  // duplicates on purpose).
  void Add(std::string key, Value value);
  void AddString(std::string key, std::string v) {
    Add(std::move(key), Value::String(std::move(v)));
  }
  void AddUint32(std::string key, uint32_t v) {
    Add(std::move(key), Value::Uint(ValueType::kUint32, v));
  }
  void AddFloat32(std::string key, float v) {
    Add(std::move(key), Value::Float(ValueType::kFloat32, v));
  }
  void AddBool(std::string key, bool v) { Add(std::move(key), Value::Bool(v)); }

  // A tensor with dims in ggml order (dims[0] = row length) and its raw bytes, which must be
  // exactly the size that type and dims imply (INVALID_ARGUMENT otherwise, or for an unknown
  // type / a row length that is not a multiple of the block size).
  Status AddTensor(std::string name, std::vector<int64_t> dims, uint32_t type, std::string data);
  // f32 convenience: data holds product(dims) floats.
  Status AddF32(std::string name, std::vector<int64_t> dims, const std::vector<float>& data);
  // A tensor info written verbatim, with no data (tests of reader validation).
  void AddRawTensorInfo(std::string name, std::vector<uint64_t> dims, uint32_t type,
                        uint64_t offset);

  // The whole file: header, metadata, tensor infos, padding, data (each tensor aligned).
  std::string Serialize() const;
  // Serialize() to `path`. INVALID_ARGUMENT when it cannot be written.
  Status WriteFile(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type = 0;
    uint64_t offset = 0;  // within the data section
    std::string data;
  };
  uint64_t alignment_;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<Tensor> tensors_;
  uint64_t data_size_ = 0;  // bytes of the data section so far (aligned)
};

}  // namespace sqz::gguf
