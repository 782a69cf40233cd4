// GGUF file reader (format versions 2 and 3, little-endian), memory mapped.
//
// Layout (GGUF spec): "GGUF" magic, uint32 version, uint64 tensor count, uint64 metadata count,
// the metadata key/value pairs, the tensor infos (name, dims, ggml type, offset), padding to
// general.alignment (default 32), then the tensor data; each tensor's offset is relative to the
// start of the data section and a multiple of the alignment.
//
// File::Open validates everything it reads before any of it is used: magic, version, every length
// and count against the bytes that remain, value and tensor types, alignment, that every tensor's
// bytes lie inside the file, duplicate keys and names. Errors name the file and what was wrong:
//   NOT_FOUND         the file does not exist
//   INVALID_ARGUMENT  not GGUF (bad magic), truncated, malformed or inconsistent contents
//   UNIMPLEMENTED     a GGUF version other than 2 or 3, big-endian files, nested arrays
//
// Ownership: a File owns its mapping; tensor data pointers (TensorInfo::data) point into it and
// stay valid while the File lives. Immutable after Open: all methods may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "engine/gguf/gguf_types.h"

namespace sqz::gguf {

// One metadata value. The field that holds it depends on type (and elem_type for arrays):
// unsigned integers and bool in u / us, signed integers in i / is, float32 and float64 in f / fs
// (float32 widened exactly), strings in s / ss. Arrays of arrays are not supported (as in ggml).
struct Value {
  ValueType type = ValueType::kUint8;
  ValueType elem_type = ValueType::kUint8;  // kArray only: type of every element
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<uint64_t> us;
  std::vector<int64_t> is;
  std::vector<double> fs;
  std::vector<std::string> ss;

  bool is_array() const { return type == ValueType::kArray; }
  // Number of elements of an array (0 for a scalar).
  uint64_t array_size() const;

  static Value Uint(ValueType type, uint64_t v);  // kUint8/16/32/64 or kBool
  static Value Int(ValueType type, int64_t v);    // kInt8/16/32/64
  static Value Float(ValueType type, double v);   // kFloat32/64
  static Value Bool(bool v) { return Uint(ValueType::kBool, v ? 1 : 0); }
  static Value String(std::string v);
  static Value UintArray(ValueType elem_type, std::vector<uint64_t> v);
  static Value IntArray(ValueType elem_type, std::vector<int64_t> v);
  static Value FloatArray(ValueType elem_type, std::vector<double> v);
  static Value StringArray(std::vector<std::string> v);
};

struct TensorInfo {
  std::string name;
  // ggml order: dims[0] is the fastest-varying dimension (the row length). A Hugging Face Linear
  // weight [out][in] is stored with dims = {in, out}.
  std::vector<int64_t> dims;
  uint32_t type = 0;              // a known TensorType value (validated)
  uint64_t offset = 0;            // from the start of the data section
  int64_t n_elements = 0;         // product of dims
  int64_t n_bytes = 0;            // n_elements / block_size * type_size
  const uint8_t* data = nullptr;  // into the File's mapping: n_bytes bytes

  TensorType tensor_type() const { return static_cast<TensorType>(type); }
  int64_t rows() const { return dims.empty() ? 1 : n_elements / dims[0]; }  // product of dims[1..]
};

class File {
 public:
  // Maps and validates the file at `path`.
  static StatusOr<std::unique_ptr<File>> Open(const std::string& path);
  // Validates a GGUF image held in memory (tests, embedded files). `name` is used in messages.
  static StatusOr<std::unique_ptr<File>> FromBytes(std::string bytes,
                                                   std::string name = "<memory>");

  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the data section
  uint64_t file_size() const { return size_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, Value>>& metadata() const { return metadata_; }
  const Value* FindValue(std::string_view key) const;  // nullptr when absent
  bool Has(std::string_view key) const { return FindValue(key) != nullptr; }

  // Typed getters. NOT_FOUND when the key is absent; INVALID_ARGUMENT when its type does not fit
  // (naming the key, the stored type and the expected one).
  StatusOr<std::string> GetString(std::string_view key) const;
  StatusOr<uint64_t> GetUint(std::string_view key) const;  // any integer type, value >= 0
  StatusOr<int64_t> GetInt(std::string_view key) const;    // any integer type that fits int64
  StatusOr<double> GetFloat(std::string_view key) const;   // float32 or float64
  StatusOr<bool> GetBool(std::string_view key) const;
  StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;  // integer elements
  StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;  // float elements

  // Tensor infos in file order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* FindTensor(std::string_view name) const;  // nullptr when absent

 private:
  File() = default;
  // Parses [base_, base_ + size_) into the members; called once by Open / FromBytes.
  Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;  // mapping or owned_bytes_.data()
  uint64_t size_ = 0;
  void* mapping_ = nullptr;  // mmap'd region when opened from a file (munmap'd by the destructor)
  std::string owned_bytes_;  // FromBytes' image
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<TensorInfo> tensors_;
};

}  // namespace sqz::gguf
