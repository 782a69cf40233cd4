#include "engine/gguf/gguf_writer.h"

#include <cstring>
#include <fstream>

namespace sqz::gguf {
namespace {

template <typename T>
void Put(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out->append(b, sizeof(T));
}

void PutString(std::string* out, std::string_view s) {
  Put<uint64_t>(out, s.size());
  out->append(s);
}

void PutScalar(std::string* out, ValueType type, uint64_t u, int64_t i, double f,
               const std::string& s) {
  switch (type) {
    case ValueType::kUint8:
    case ValueType::kBool:
      Put<uint8_t>(out, static_cast<uint8_t>(u));
      break;
    case ValueType::kUint16:
      Put<uint16_t>(out, static_cast<uint16_t>(u));
      break;
    case ValueType::kUint32:
      Put<uint32_t>(out, static_cast<uint32_t>(u));
      break;
    case ValueType::kUint64:
      Put<uint64_t>(out, u);
      break;
    case ValueType::kInt8:
      Put<int8_t>(out, static_cast<int8_t>(i));
      break;
    case ValueType::kInt16:
      Put<int16_t>(out, static_cast<int16_t>(i));
      break;
    case ValueType::kInt32:
      Put<int32_t>(out, static_cast<int32_t>(i));
      break;
    case ValueType::kInt64:
      Put<int64_t>(out, i);
      break;
    case ValueType::kFloat32:
      Put<float>(out, static_cast<float>(f));
      break;
    case ValueType::kFloat64:
      Put<double>(out, f);
      break;
    case ValueType::kString:
      PutString(out, s);
      break;
    case ValueType::kArray:
      SQZ_CHECK(false) << "arrays of arrays are not written";
      break;
  }
}

void PutValue(std::string* out, const Value& v) {
  Put<uint32_t>(out, static_cast<uint32_t>(v.type));
  if (!v.is_array()) {
    PutScalar(out, v.type, v.u, v.i, v.f, v.s);
    return;
  }
  Put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
  Put<uint64_t>(out, v.array_size());
  static const std::string kEmpty;
  for (uint64_t x : v.us) PutScalar(out, v.elem_type, x, 0, 0, kEmpty);
  for (int64_t x : v.is) PutScalar(out, v.elem_type, 0, x, 0, kEmpty);
  for (double x : v.fs) PutScalar(out, v.elem_type, 0, 0, x, kEmpty);
  for (const std::string& x : v.ss) PutScalar(out, v.elem_type, 0, 0, 0, x);
}

uint64_t AlignUp(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

}  // namespace

Writer::Writer(uint64_t alignment) : alignment_(alignment) {
  if (alignment_ != 32) AddUint32("general.alignment", static_cast<uint32_t>(alignment_));
}

void Writer::Add(std::string key, Value value) {
  metadata_.emplace_back(std::move(key), std::move(value));
}

Status Writer::AddTensor(std::string name, std::vector<int64_t> dims, uint32_t type,
                         std::string data) {
  const TypeTraits* traits = FindTypeTraits(type);
  if (traits == nullptr) {
    return InvalidArgumentError("tensor '" + name + "': unknown ggml type " + std::to_string(type));
  }
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  const int64_t row = dims.empty() ? 1 : dims[0];
  if (row % traits->block_size != 0) {
    return InvalidArgumentError("tensor '" + name + "': row length " + std::to_string(row) +
                                " is not a multiple of " + std::string(traits->name) +
                                "'s block size");
  }
  const uint64_t want = static_cast<uint64_t>(n / traits->block_size * traits->type_size);
  if (data.size() != want) {
    return InvalidArgumentError("tensor '" + name + "': " + std::to_string(data.size()) +
                                " bytes of data, expected " + std::to_string(want));
  }
  Tensor t;
  t.name = std::move(name);
  t.dims.assign(dims.begin(), dims.end());
  t.type = type;
  t.offset = data_size_;
  data_size_ = AlignUp(data_size_ + data.size(), alignment_);
  t.data = std::move(data);
  tensors_.push_back(std::move(t));
  return OkStatus();
}

Status Writer::AddF32(std::string name, std::vector<int64_t> dims, const std::vector<float>& data) {
  std::string bytes(data.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), data.data(), bytes.size());
  return AddTensor(std::move(name), std::move(dims), static_cast<uint32_t>(TensorType::kF32),
                   std::move(bytes));
}

void Writer::AddRawTensorInfo(std::string name, std::vector<uint64_t> dims, uint32_t type,
                              uint64_t offset) {
  Tensor t;
  t.name = std::move(name);
  t.dims = std::move(dims);
  t.type = type;
  t.offset = offset;
  tensors_.push_back(std::move(t));
}

std::string Writer::Serialize() const {
  std::string out;
  out.append("GGUF", 4);
  Put<uint32_t>(&out, 3);
  Put<uint64_t>(&out, tensors_.size());
  Put<uint64_t>(&out, metadata_.size());
  for (const auto& [key, value] : metadata_) {
    PutString(&out, key);
    PutValue(&out, value);
  }
  for (const Tensor& t : tensors_) {
    PutString(&out, t.name);
    Put<uint32_t>(&out, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) Put<uint64_t>(&out, d);
    Put<uint32_t>(&out, t.type);
    Put<uint64_t>(&out, t.offset);
  }
  const uint64_t data_start = AlignUp(out.size(), alignment_);
  out.resize(data_start, '\0');
  for (const Tensor& t : tensors_) {
    if (t.data.empty()) continue;
    out.resize(data_start + t.offset, '\0');
    out.append(t.data);
  }
  return out;
}

Status Writer::WriteFile(const std::string& path) const {
  const std::string bytes = Serialize();
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) return InvalidArgumentError("cannot write GGUF file " + path);
  return OkStatus();
}

}  // namespace sqz::gguf
