#include "engine/gguf/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <unordered_set>

namespace sqz::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr int kMaxDims = 4;              // GGML_MAX_DIMS

// Bounds-checked little-endian reads over the file image. Every read states what it reads, so
// a truncated file reports the field it ended in.
class Cursor {
 public:
  Cursor(const uint8_t* base, uint64_t size, const std::string& path)
      : base_(base), size_(size), path_(path) {}

  uint64_t pos() const { return pos_; }
  Status Error(const std::string& msg) const {
    return InvalidArgumentError("GGUF " + path_ + ": " + msg);
  }
  uint64_t remaining() const { return size_ - pos_; }

  Status Need(uint64_t n, std::string_view what) const {
    if (n > remaining()) {
      return InvalidArgumentError("GGUF " + path_ + ": truncated file: " + std::string(what) +
                                  " needs " + std::to_string(n) + " bytes at offset " +
                                  std::to_string(pos_) + ", but the file has " +
                                  std::to_string(size_) + " bytes");
    }
    return OkStatus();
  }

  template <typename T>
  StatusOr<T> Read(std::string_view what) {
    SQZ_RETURN_IF_ERROR(Need(sizeof(T), what));
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  StatusOr<std::string> ReadString(std::string_view what) {
    SQZ_ASSIGN_OR_RETURN(uint64_t n, Read<uint64_t>(what));
    SQZ_RETURN_IF_ERROR(Need(n, what));
    std::string s(reinterpret_cast<const char*>(base_ + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

// Reads one scalar of `type` (not array) into `v`.
Status ReadScalar(Cursor& c, ValueType type, const std::string& what, Value* v) {
  v->type = type;
  switch (type) {
    case ValueType::kUint8: {
      SQZ_ASSIGN_OR_RETURN(v->u, c.Read<uint8_t>(what));
      return OkStatus();
    }
    case ValueType::kBool: {
      SQZ_ASSIGN_OR_RETURN(uint8_t b, c.Read<uint8_t>(what));
      if (b > 1) return c.Error(what + " is a bool stored as " + std::to_string(b));
      v->u = b;
      return OkStatus();
    }
    case ValueType::kUint16: {
      SQZ_ASSIGN_OR_RETURN(v->u, c.Read<uint16_t>(what));
      return OkStatus();
    }
    case ValueType::kUint32: {
      SQZ_ASSIGN_OR_RETURN(v->u, c.Read<uint32_t>(what));
      return OkStatus();
    }
    case ValueType::kUint64: {
      SQZ_ASSIGN_OR_RETURN(v->u, c.Read<uint64_t>(what));
      return OkStatus();
    }
    case ValueType::kInt8: {
      SQZ_ASSIGN_OR_RETURN(v->i, c.Read<int8_t>(what));
      return OkStatus();
    }
    case ValueType::kInt16: {
      SQZ_ASSIGN_OR_RETURN(v->i, c.Read<int16_t>(what));
      return OkStatus();
    }
    case ValueType::kInt32: {
      SQZ_ASSIGN_OR_RETURN(v->i, c.Read<int32_t>(what));
      return OkStatus();
    }
    case ValueType::kInt64: {
      SQZ_ASSIGN_OR_RETURN(v->i, c.Read<int64_t>(what));
      return OkStatus();
    }
    case ValueType::kFloat32: {
      SQZ_ASSIGN_OR_RETURN(v->f, c.Read<float>(what));
      return OkStatus();
    }
    case ValueType::kFloat64: {
      SQZ_ASSIGN_OR_RETURN(v->f, c.Read<double>(what));
      return OkStatus();
    }
    case ValueType::kString: {
      SQZ_ASSIGN_OR_RETURN(v->s, c.ReadString(what));
      return OkStatus();
    }
    case ValueType::kArray:
      break;
  }
  return InternalError("ReadScalar called for an array");
}

bool IsUnsigned(ValueType t) {
  return t == ValueType::kUint8 || t == ValueType::kUint16 || t == ValueType::kUint32 ||
         t == ValueType::kUint64 || t == ValueType::kBool;
}
bool IsSigned(ValueType t) {
  return t == ValueType::kInt8 || t == ValueType::kInt16 || t == ValueType::kInt32 ||
         t == ValueType::kInt64;
}
bool IsFloat(ValueType t) { return t == ValueType::kFloat32 || t == ValueType::kFloat64; }

// Reads the typed value of metadata key `key` at the cursor.
Status ReadValue(Cursor& c, const std::string& path, const std::string& key, Value* v) {
  const std::string what = "value of key '" + key + "'";
  SQZ_ASSIGN_OR_RETURN(uint32_t raw_type, c.Read<uint32_t>("type of key '" + key + "'"));
  if (!IsKnownValueType(raw_type)) {
    return InvalidArgumentError("GGUF " + path + ": key '" + key + "' has unknown value type " +
                                std::to_string(raw_type));
  }
  const auto type = static_cast<ValueType>(raw_type);
  if (type != ValueType::kArray) return ReadScalar(c, type, what, v);

  v->type = ValueType::kArray;
  SQZ_ASSIGN_OR_RETURN(uint32_t raw_elem, c.Read<uint32_t>("element type of key '" + key + "'"));
  if (!IsKnownValueType(raw_elem)) {
    return InvalidArgumentError("GGUF " + path + ": array '" + key + "' has unknown element type " +
                                std::to_string(raw_elem));
  }
  v->elem_type = static_cast<ValueType>(raw_elem);
  if (v->elem_type == ValueType::kArray) {
    return UnimplementedError("GGUF " + path + ": key '" + key +
                              "' is an array of arrays, which is not supported");
  }
  SQZ_ASSIGN_OR_RETURN(uint64_t n, c.Read<uint64_t>("length of array '" + key + "'"));
  // Each element takes at least this many bytes: bound n before allocating for it.
  const uint64_t min_size = v->elem_type == ValueType::kString ? 8 : ScalarSize(v->elem_type);
  if (n > c.remaining() / min_size) {
    return InvalidArgumentError("GGUF " + path + ": truncated file: array '" + key + "' of " +
                                std::to_string(n) + " " + std::string(ValueTypeName(v->elem_type)) +
                                " elements does not fit in the " + std::to_string(c.remaining()) +
                                " bytes left at offset " + std::to_string(c.pos()));
  }
  if (IsUnsigned(v->elem_type)) v->us.reserve(n);
  if (IsSigned(v->elem_type)) v->is.reserve(n);
  if (IsFloat(v->elem_type)) v->fs.reserve(n);
  if (v->elem_type == ValueType::kString) v->ss.reserve(n);
  Value e;
  for (uint64_t k = 0; k < n; ++k) {
    SQZ_RETURN_IF_ERROR(ReadScalar(c, v->elem_type, what, &e));
    if (IsUnsigned(v->elem_type)) v->us.push_back(e.u);
    if (IsSigned(v->elem_type)) v->is.push_back(e.i);
    if (IsFloat(v->elem_type)) v->fs.push_back(e.f);
    if (v->elem_type == ValueType::kString) v->ss.push_back(std::move(e.s));
  }
  return OkStatus();
}

std::string TypeMismatch(const std::string& path, std::string_view key, const Value& v,
                         std::string_view expected) {
  std::string got(ValueTypeName(v.type));
  if (v.is_array()) got = "array of " + std::string(ValueTypeName(v.elem_type));
  return "GGUF " + path + ": key '" + std::string(key) + "' is " + got + ", expected " +
         std::string(expected);
}

}  // namespace

uint64_t Value::array_size() const {
  if (!is_array()) return 0;
  return us.size() + is.size() + fs.size() + ss.size();
}

Value Value::Uint(ValueType type, uint64_t v) {
  Value r;
  r.type = type;
  r.u = v;
  return r;
}
Value Value::Int(ValueType type, int64_t v) {
  Value r;
  r.type = type;
  r.i = v;
  return r;
}
Value Value::Float(ValueType type, double v) {
  Value r;
  r.type = type;
  r.f = v;
  return r;
}
Value Value::String(std::string v) {
  Value r;
  r.type = ValueType::kString;
  r.s = std::move(v);
  return r;
}
Value Value::UintArray(ValueType elem_type, std::vector<uint64_t> v) {
  Value r;
  r.type = ValueType::kArray;
  r.elem_type = elem_type;
  r.us = std::move(v);
  return r;
}
Value Value::IntArray(ValueType elem_type, std::vector<int64_t> v) {
  Value r;
  r.type = ValueType::kArray;
  r.elem_type = elem_type;
  r.is = std::move(v);
  return r;
}
Value Value::FloatArray(ValueType elem_type, std::vector<double> v) {
  Value r;
  r.type = ValueType::kArray;
  r.elem_type = elem_type;
  r.fs = std::move(v);
  return r;
}
Value Value::StringArray(std::vector<std::string> v) {
  Value r;
  r.type = ValueType::kArray;
  r.elem_type = ValueType::kString;
  r.ss = std::move(v);
  return r;
}

StatusOr<std::unique_ptr<File>> File::Open(const std::string& path) {
  std::unique_ptr<File> f(new File());
  f->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string msg = "GGUF " + path + ": cannot open: " + std::strerror(err);
    return err == ENOENT ? NotFoundError(msg) : InvalidArgumentError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgumentError("GGUF " + path + ": not a regular file");
  }
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {
    void* m = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return InvalidArgumentError("GGUF " + path + ": mmap failed: " + std::strerror(err));
    }
    f->mapping_ = m;
    f->base_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);  // the mapping stays valid
  SQZ_RETURN_IF_ERROR(f->Parse());
  return f;
}

StatusOr<std::unique_ptr<File>> File::FromBytes(std::string bytes, std::string name) {
  std::unique_ptr<File> f(new File());
  f->path_ = std::move(name);
  f->owned_bytes_ = std::move(bytes);
  f->base_ = reinterpret_cast<const uint8_t*>(f->owned_bytes_.data());
  f->size_ = f->owned_bytes_.size();
  SQZ_RETURN_IF_ERROR(f->Parse());
  return f;
}

File::~File() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

Status File::Parse() {
  const std::string& p = path_;
  Cursor c(base_, size_, p);
  if (size_ < 4) {
    return InvalidArgumentError("GGUF " + p + ": not a GGUF file: only " + std::to_string(size_) +
                                " bytes");
  }
  SQZ_ASSIGN_OR_RETURN(uint32_t magic, c.Read<uint32_t>("magic"));
  if (magic != kMagic) {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "%02x %02x %02x %02x", base_[0], base_[1], base_[2], base_[3]);
    return InvalidArgumentError("GGUF " + p + ": not a GGUF file: bad magic " + hex +
                                " (expected 47 47 55 46, \"GGUF\")");
  }
  SQZ_ASSIGN_OR_RETURN(version_, c.Read<uint32_t>("version"));
  if (version_ != 2 && version_ != 3) {
    // A big-endian file's version 3 reads as 0x03000000 here.
    if ((version_ & 0xffff) == 0 && version_ != 0) {
      return UnimplementedError("GGUF " + p + ": big-endian GGUF files are not supported");
    }
    return UnimplementedError("GGUF " + p + ": unsupported GGUF version " +
                              std::to_string(version_) + " (supported: 2 and 3)");
  }
  SQZ_ASSIGN_OR_RETURN(uint64_t n_tensors, c.Read<uint64_t>("tensor count"));
  SQZ_ASSIGN_OR_RETURN(uint64_t n_kv, c.Read<uint64_t>("metadata count"));
  // A key/value pair takes at least 8 + 4 + 1 bytes, a tensor info at least 8 + 4 + 4 + 8.
  if (n_kv > c.remaining() / 13) {
    return InvalidArgumentError("GGUF " + p + ": metadata count " + std::to_string(n_kv) +
                                " cannot fit in a file of " + std::to_string(size_) +
                                " bytes (truncated or corrupt file)");
  }
  if (n_tensors > c.remaining() / 24) {
    return InvalidArgumentError("GGUF " + p + ": tensor count " + std::to_string(n_tensors) +
                                " cannot fit in a file of " + std::to_string(size_) +
                                " bytes (truncated or corrupt file)");
  }

  std::unordered_set<std::string> keys;
  metadata_.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    SQZ_ASSIGN_OR_RETURN(std::string key,
                         c.ReadString("key of metadata pair " + std::to_string(k)));
    if (!keys.insert(key).second) {
      return InvalidArgumentError("GGUF " + p + ": duplicate metadata key '" + key + "'");
    }
    Value v;
    SQZ_RETURN_IF_ERROR(ReadValue(c, p, key, &v));
    metadata_.emplace_back(std::move(key), std::move(v));
  }

  if (const Value* a = FindValue("general.alignment")) {
    if (a->type != ValueType::kUint32) {
      return InvalidArgumentError(TypeMismatch(p, "general.alignment", *a, "uint32"));
    }
    if (a->u == 0 || (a->u & (a->u - 1)) != 0) {
      return InvalidArgumentError("GGUF " + p + ": general.alignment " + std::to_string(a->u) +
                                  " is not a power of two");
    }
    alignment_ = a->u;
  }

  std::unordered_set<std::string> names;
  tensors_.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo t;
    SQZ_ASSIGN_OR_RETURN(t.name, c.ReadString("name of tensor " + std::to_string(k)));
    const std::string tn = "tensor '" + t.name + "'";
    if (!names.insert(t.name).second) {
      return InvalidArgumentError("GGUF " + p + ": duplicate " + tn);
    }
    SQZ_ASSIGN_OR_RETURN(uint32_t n_dims, c.Read<uint32_t>("dimension count of " + tn));
    if (n_dims > kMaxDims) {
      return InvalidArgumentError("GGUF " + p + ": " + tn + " has " + std::to_string(n_dims) +
                                  " dimensions (at most 4)");
    }
    t.n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      SQZ_ASSIGN_OR_RETURN(uint64_t dim, c.Read<uint64_t>("dimensions of " + tn));
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (dim != 0 && static_cast<uint64_t>(t.n_elements) >
                           static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim)) {
        return InvalidArgumentError("GGUF " + p + ": " + tn + " has too many elements");
      }
      t.dims.push_back(static_cast<int64_t>(dim));
      t.n_elements *= static_cast<int64_t>(dim);
    }
    SQZ_ASSIGN_OR_RETURN(t.type, c.Read<uint32_t>("type of " + tn));
    const TypeTraits* traits = FindTypeTraits(t.type);
    if (traits == nullptr) {
      return InvalidArgumentError("GGUF " + p + ": " + tn + " has unknown ggml type " +
                                  std::to_string(t.type));
    }
    const int64_t row = t.dims.empty() ? 1 : t.dims[0];
    if (row % traits->block_size != 0) {
      return InvalidArgumentError("GGUF " + p + ": " + tn + " has rows of " + std::to_string(row) +
                                  " elements, not a multiple of " + std::string(traits->name) +
                                  "'s block size " + std::to_string(traits->block_size));
    }
    // n_elements < 2^63 and type_size <= 292 < block_size * 2^3 for block types; for 1-element
    // blocks bytes = n * type_size, checked against overflow.
    const uint64_t blocks = static_cast<uint64_t>(t.n_elements / traits->block_size);
    if (blocks > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) /
                     static_cast<uint64_t>(traits->type_size)) {
      return InvalidArgumentError("GGUF " + p + ": " + tn + " is too large");
    }
    t.n_bytes = static_cast<int64_t>(blocks * traits->type_size);
    SQZ_ASSIGN_OR_RETURN(t.offset, c.Read<uint64_t>("data offset of " + tn));
    if (t.offset % alignment_ != 0) {
      return InvalidArgumentError("GGUF " + p + ": " + tn + " has data offset " +
                                  std::to_string(t.offset) + ", not a multiple of the alignment " +
                                  std::to_string(alignment_));
    }
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment (an empty tail is allowed when
  // there are no tensors).
  const uint64_t end_of_infos = c.pos();
  data_offset_ = (end_of_infos + alignment_ - 1) / alignment_ * alignment_;
  if (!tensors_.empty() && data_offset_ > size_) {
    return InvalidArgumentError("GGUF " + p + ": truncated file: the data section would start at " +
                                std::to_string(data_offset_) + ", but the file has " +
                                std::to_string(size_) + " bytes");
  }
  const uint64_t data_size = size_ > data_offset_ ? size_ - data_offset_ : 0;
  for (TensorInfo& t : tensors_) {
    const uint64_t nb = static_cast<uint64_t>(t.n_bytes);
    if (t.offset > data_size || nb > data_size - t.offset) {
      return InvalidArgumentError(
          "GGUF " + p + ": tensor '" + t.name + "' data [" + std::to_string(t.offset) + ", " +
          std::to_string(t.offset + nb) + ") is out of range: the data section has " +
          std::to_string(data_size) + " bytes (file truncated or offset corrupt)");
    }
    t.data = base_ + data_offset_ + t.offset;
  }
  return OkStatus();
}

const Value* File::FindValue(std::string_view key) const {
  for (const auto& [k, v] : metadata_) {
    if (k == key) return &v;
  }
  return nullptr;
}

const TensorInfo* File::FindTensor(std::string_view name) const {
  for (const TensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

StatusOr<std::string> File::GetString(std::string_view key) const {
  const Value* v = FindValue(key);
  if (v == nullptr)
    return NotFoundError("GGUF " + path_ + ": missing key '" + std::string(key) + "'");
  if (v->type != ValueType::kString)
    return InvalidArgumentError(TypeMismatch(path_, key, *v, "string"));
  return v->s;
}

StatusOr<uint64_t> File::GetUint(std::string_view key) const {
  const Value* v = FindValue(key);
  if (v == nullptr)
    return NotFoundError("GGUF " + path_ + ": missing key '" + std::string(key) + "'");
  if (IsUnsigned(v->type) && v->type != ValueType::kBool) return v->u;
  if (IsSigned(v->type) && v->i >= 0) return static_cast<uint64_t>(v->i);
  if (IsSigned(v->type)) {
    return InvalidArgumentError("GGUF " + path_ + ": key '" + std::string(key) + "' is " +
                                std::to_string(v->i) + ", expected a value >= 0");
  }
  return InvalidArgumentError(TypeMismatch(path_, key, *v, "an integer"));
}

StatusOr<int64_t> File::GetInt(std::string_view key) const {
  const Value* v = FindValue(key);
  if (v == nullptr)
    return NotFoundError("GGUF " + path_ + ": missing key '" + std::string(key) + "'");
  if (IsSigned(v->type)) return v->i;
  if (IsUnsigned(v->type) && v->type != ValueType::kBool) {
    if (v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return InvalidArgumentError("GGUF " + path_ + ": key '" + std::string(key) + "' is " +
                                  std::to_string(v->u) + ", too large");
    }
    return static_cast<int64_t>(v->u);
  }
  return InvalidArgumentError(TypeMismatch(path_, key, *v, "an integer"));
}

StatusOr<double> File::GetFloat(std::string_view key) const {
  const Value* v = FindValue(key);
  if (v == nullptr)
    return NotFoundError("GGUF " + path_ + ": missing key '" + std::string(key) + "'");
  if (IsFloat(v->type)) return v->f;
  return InvalidArgumentError(TypeMismatch(path_, key, *v, "float32 or float64"));
}

StatusOr<bool> File::GetBool(std::string_view key) const {
  const Value* v = FindValue(key);
  if (v == nullptr)
    return NotFoundError("GGUF " + path_ + ": missing key '" + std::string(key) + "'");
  if (v->type == ValueType::kBool) return v->u != 0;
  return InvalidArgumentError(TypeMismatch(path_, key, *v, "bool"));
}

StatusOr<std::vector<std::string>> File::GetStringArray(std::string_view key) const {
  const Value* v = FindValue(key);
  if (v == nullptr)
    return NotFoundError("GGUF " + path_ + ": missing key '" + std::string(key) + "'");
  if (v->is_array() && v->elem_type == ValueType::kString) return v->ss;
  return InvalidArgumentError(TypeMismatch(path_, key, *v, "array of string"));
}

StatusOr<std::vector<int64_t>> File::GetIntArray(std::string_view key) const {
  const Value* v = FindValue(key);
  if (v == nullptr)
    return NotFoundError("GGUF " + path_ + ": missing key '" + std::string(key) + "'");
  if (v->is_array() && IsSigned(v->elem_type)) return v->is;
  if (v->is_array() && IsUnsigned(v->elem_type) && v->elem_type != ValueType::kBool) {
    std::vector<int64_t> out;
    out.reserve(v->us.size());
    for (uint64_t x : v->us) {
      if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return InvalidArgumentError("GGUF " + path_ + ": key '" + std::string(key) + "' holds " +
                                    std::to_string(x) + ", too large");
      }
      out.push_back(static_cast<int64_t>(x));
    }
    return out;
  }
  return InvalidArgumentError(TypeMismatch(path_, key, *v, "array of integers"));
}

StatusOr<std::vector<float>> File::GetFloatArray(std::string_view key) const {
  const Value* v = FindValue(key);
  if (v == nullptr)
    return NotFoundError("GGUF " + path_ + ": missing key '" + std::string(key) + "'");
  if (v->is_array() && IsFloat(v->elem_type)) return std::vector<float>(v->fs.begin(), v->fs.end());
  return InvalidArgumentError(TypeMismatch(path_, key, *v, "array of float32"));
}

}  // namespace sqz::gguf
