// Safetensors files (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {...}},
// then the raw little-endian tensor data.
//
// SafetensorsFile maps a file read-only (mmap) and indexes its tensors; tensor data are read in
// place, never copied until ToFloat32 converts one. WriteSafetensors writes such a file from fp32
// buffers (used by sqz-make-tiny-model and by tests).
//
// Ownership: a SafetensorsFile owns its mapping; TensorView::data points into it and is valid while
// the file object lives. Thread safety: immutable after Open; const methods may run concurrently.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace sqz {

enum class TensorDType { kF32, kF16, kBF16, kOther };

// "F32", "F16", "BF16"; kOther tensors keep their own name in TensorView::dtype_name.
const char* TensorDTypeName(TensorDType dtype);

// One tensor inside a mapped file.
struct TensorView {
  std::string name;
  TensorDType dtype = TensorDType::kOther;
  std::string dtype_name;         // as written in the header ("F32", "BF16", "I64", ...)
  std::vector<int64_t> shape;     // row-major; {} is a scalar
  const uint8_t* data = nullptr;  // points into the mapping: num_elements * element size bytes
  int64_t num_bytes = 0;

  int64_t NumElements() const;
  std::string ShapeString() const;  // "[512, 64]"
};

class SafetensorsFile {
 public:
  // Maps and parses `path`. Errors: NOT_FOUND (no such file), INVALID_ARGUMENT (header length
  // beyond the file, bad JSON, an entry without dtype/shape/data_offsets, an unknown dtype, offsets
  // that disagree with shape and dtype, overlapping tensors), DATA_LOSS (file shorter than its
  // tensors need: truncated).
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  // nullptr when the file has no tensor of that name.
  const TensorView* Find(const std::string& name) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

 private:
  SafetensorsFile(std::string path, void* map, size_t size)
      : path_(std::move(path)), map_(map), size_(size) {}

  std::string path_;
  void* map_;    // owned mmap of the whole file
  size_t size_;  // mapped bytes
  std::map<std::string, TensorView> tensors_;
};

// Converts a F32/F16/BF16 tensor to fp32. out: [t.NumElements()].
// UNIMPLEMENTED ("tensor X has dtype I64; supported: F32, F16, BF16") for other dtypes.
Status ToFloat32(const TensorView& t, float* out);

// Scalar conversions (round to nearest even when narrowing; NaN stays NaN).
float Bf16ToFloat(uint16_t h);
float F16ToFloat(uint16_t h);
uint16_t FloatToBf16(float f);
uint16_t FloatToF16(float f);

// A tensor to write: fp32 data stored as `dtype` (F32, F16 or BF16).
struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> data;  // [product of shape]
  TensorDType dtype = TensorDType::kF32;
};

// Writes a safetensors file (tensors in the given order, header padded to 8 bytes, metadata
// {"format": "pt"}). INVALID_ARGUMENT when a shape does not match its data or a dtype is kOther;
// INTERNAL when the file cannot be written.
Status WriteSafetensors(const std::string& path, std::span<const TensorToWrite> tensors);

}  // namespace sqz
