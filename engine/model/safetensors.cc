#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>

namespace sqz {
namespace {

using json = nlohmann::json;

// Element size of a safetensors dtype name, or 0 if unknown.
int64_t ElementSize(const std::string& name) {
  if (name == "F64" || name == "I64" || name == "U64") return 8;
  if (name == "F32" || name == "I32" || name == "U32") return 4;
  if (name == "F16" || name == "BF16" || name == "I16" || name == "U16") return 2;
  if (name == "I8" || name == "U8" || name == "BOOL" || name == "F8_E4M3" || name == "F8_E5M2") {
    return 1;
  }
  return 0;
}

TensorDType DTypeFromName(const std::string& name) {
  if (name == "F32") return TensorDType::kF32;
  if (name == "F16") return TensorDType::kF16;
  if (name == "BF16") return TensorDType::kBF16;
  return TensorDType::kOther;
}

Status ParseEntry(const std::string& file, const std::string& name, const json& e,
                  int64_t data_size, TensorView* t) {
  const std::string where = file + ": tensor \"" + name + "\"";
  if (!e.is_object()) return InvalidArgumentError(where + ": entry is not an object");
  auto dt = e.find("dtype");
  auto sh = e.find("shape");
  auto off = e.find("data_offsets");
  if (dt == e.end() || !dt->is_string()) return InvalidArgumentError(where + ": no dtype");
  if (sh == e.end() || !sh->is_array()) return InvalidArgumentError(where + ": no shape");
  if (off == e.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned()) {
    return InvalidArgumentError(where + ": data_offsets must be two non-negative integers");
  }
  t->name = name;
  t->dtype_name = dt->get<std::string>();
  t->dtype = DTypeFromName(t->dtype_name);
  const int64_t elem = ElementSize(t->dtype_name);
  if (elem == 0) return InvalidArgumentError(where + ": unknown dtype \"" + t->dtype_name + "\"");
  for (const json& d : *sh) {
    if (!d.is_number_unsigned()) {
      return InvalidArgumentError(where + ": shape " + sh->dump() + " is not a list of sizes");
    }
    t->shape.push_back(d.get<int64_t>());
  }
  const uint64_t begin = (*off)[0].get<uint64_t>();
  const uint64_t end = (*off)[1].get<uint64_t>();
  if (end < begin) return InvalidArgumentError(where + ": data_offsets end before they begin");
  t->num_bytes = static_cast<int64_t>(end - begin);
  if (t->num_bytes != t->NumElements() * elem) {
    return InvalidArgumentError(where + ": data_offsets span " + std::to_string(t->num_bytes) +
                                " bytes but shape " + t->ShapeString() + " of " + t->dtype_name +
                                " needs " + std::to_string(t->NumElements() * elem));
  }
  if (static_cast<int64_t>(end) > data_size) {
    return DataLossError(where + " needs data bytes [" + std::to_string(begin) + ", " +
                         std::to_string(end) + ") but the file has only " +
                         std::to_string(data_size) + ": the file is truncated");
  }
  return OkStatus();
}

}  // namespace

const char* TensorDTypeName(TensorDType dtype) {
  switch (dtype) {
    case TensorDType::kF32:
      return "F32";
    case TensorDType::kF16:
      return "F16";
    case TensorDType::kBF16:
      return "BF16";
    case TensorDType::kOther:
      return "other";
  }
  return "?";
}

int64_t TensorView::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::ShapeString() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string msg = path + ": " + std::strerror(err);
    return err == ENOENT ? NotFoundError(msg) : InvalidArgumentError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return InternalError(path + ": fstat failed");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return DataLossError(path + ": " + std::to_string(size) +
                         " bytes, too short for a safetensors header: the file is truncated");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return InternalError(path + ": mmap failed: " + std::strerror(errno));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(path, map, size));

  const auto* bytes = static_cast<const uint8_t*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size - 8) {
    return DataLossError(path + ": header length " + std::to_string(header_len) +
                         " exceeds the file size " + std::to_string(size) +
                         ": truncated or not a safetensors file");
  }
  json header = json::parse(bytes + 8, bytes + 8 + header_len, nullptr, false);
  if (header.is_discarded() || !header.is_object()) {
    return InvalidArgumentError(path + ": safetensors header is not a valid JSON object");
  }
  const uint8_t* data = bytes + 8 + header_len;
  const int64_t data_size = static_cast<int64_t>(size - 8 - header_len);
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    TensorView t;
    SQZ_RETURN_IF_ERROR(ParseEntry(path, it.key(), it.value(), data_size, &t));
    const int64_t begin = it.value()["data_offsets"][0].get<int64_t>();
    t.data = data + begin;
    ranges.emplace_back(begin, begin + t.num_bytes);
    file->tensors_.emplace(it.key(), std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return InvalidArgumentError(path + ": tensors overlap at data byte " +
                                  std::to_string(ranges[i].first));
    }
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() { ::munmap(map_, size_); }

const TensorView* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

float Bf16ToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float F16ToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal
    return sign ? -f : f;
  }
  uint32_t bits;
  if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf or NaN
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

uint16_t FloatToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  if (std::isnan(f)) return sign | 0x7e00;
  const float a = std::fabs(f);
  if (a >= 65520.0f) return sign | 0x7c00;  // rounds to infinity
  if (a < 6.103515625e-05f) {               // subnormal half: units of 2^-24, nearest even
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  }
  uint32_t abs_bits = bits & 0x7fffffffu;
  // Round the 23-bit mantissa to 10 bits, nearest even; a carry correctly bumps the exponent.
  abs_bits += 0xfff + ((abs_bits >> 13) & 1);
  const uint32_t exp = (abs_bits >> 23) - 112;
  return sign | static_cast<uint16_t>((exp << 10) | ((abs_bits >> 13) & 0x3ff));
}

Status ToFloat32(const TensorView& t, float* out) {
  const int64_t n = t.NumElements();
  switch (t.dtype) {
    case TensorDType::kF32:
      std::memcpy(out, t.data, n * 4);
      return OkStatus();
    case TensorDType::kBF16:
    case TensorDType::kF16: {
      const bool bf = t.dtype == TensorDType::kBF16;
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = bf ? Bf16ToFloat(h) : F16ToFloat(h);
      }
      return OkStatus();
    }
    case TensorDType::kOther:
      break;
  }
  return UnimplementedError("tensor \"" + t.name + "\" has dtype " + t.dtype_name +
                            "; supported: F32, F16, BF16");
}

Status WriteSafetensors(const std::string& path, std::span<const TensorToWrite> tensors) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::vector<std::string> blobs;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    if (n != static_cast<int64_t>(t.data.size())) {
      return InvalidArgumentError("WriteSafetensors: tensor \"" + t.name + "\" has " +
                                  std::to_string(t.data.size()) + " floats but its shape needs " +
                                  std::to_string(n));
    }
    std::string blob;
    if (t.dtype == TensorDType::kF32) {
      blob.assign(reinterpret_cast<const char*>(t.data.data()), n * 4);
    } else if (t.dtype == TensorDType::kBF16 || t.dtype == TensorDType::kF16) {
      blob.resize(n * 2);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h =
            t.dtype == TensorDType::kBF16 ? FloatToBf16(t.data[i]) : FloatToF16(t.data[i]);
        std::memcpy(blob.data() + 2 * i, &h, 2);
      }
    } else {
      return InvalidArgumentError("WriteSafetensors: tensor \"" + t.name +
                                  "\": dtype must be F32, F16 or BF16");
    }
    header[t.name] = {{"dtype", TensorDTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + blob.size()}}};
    offset += blob.size();
    blobs.push_back(std::move(blob));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return InternalError("WriteSafetensors: cannot open " + path + " for writing");
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(text.size() >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), text.size());
  for (const std::string& b : blobs) out.write(b.data(), b.size());
  out.close();
  if (!out) return InternalError("WriteSafetensors: writing " + path + " failed");
  return OkStatus();
}

}  // namespace sqz
