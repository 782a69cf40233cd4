#include "engine/gguf/gguf_file.h"

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "engine/gguf/gguf_writer.h"

namespace sqz::gguf {
namespace {

constexpr uint32_t kF32 = static_cast<uint32_t>(TensorType::kF32);
constexpr uint32_t kQ4_0 = static_cast<uint32_t>(TensorType::kQ4_0);

bool Contains(const Status& s, const std::string& needle) {
  return s.message().find(needle) != std::string::npos;
}

template <typename T>
void Poke(std::string* bytes, size_t offset, T v) {
  std::memcpy(bytes->data() + offset, &v, sizeof(T));
}

// A small file with one value of every type, a few arrays and two tensors.
Writer SampleWriter() {
  Writer w;
  w.Add("u8", Value::Uint(ValueType::kUint8, 200));
  w.Add("i8", Value::Int(ValueType::kInt8, -100));
  w.Add("u16", Value::Uint(ValueType::kUint16, 60000));
  w.Add("i16", Value::Int(ValueType::kInt16, -30000));
  w.AddUint32("u32", 4000000000u);
  w.Add("i32", Value::Int(ValueType::kInt32, -2000000000));
  w.AddFloat32("f32", 0.1f);
  w.AddBool("yes", true);
  w.AddString("name", "tiny \xE2\x96\x81 model");
  w.Add("u64", Value::Uint(ValueType::kUint64, 1ull << 60));
  w.Add("i64", Value::Int(ValueType::kInt64, -(1ll << 60)));
  w.Add("f64", Value::Float(ValueType::kFloat64, 1e300));
  w.Add("strs", Value::StringArray({"a", "", "\xF0\x9F\x98\x80"}));
  w.Add("ints", Value::IntArray(ValueType::kInt32, {1, -2, 3}));
  w.Add("uints", Value::UintArray(ValueType::kUint8, {7, 8}));
  w.Add("floats", Value::FloatArray(ValueType::kFloat32, {0.5, -1.25}));
  w.Add("empty", Value::StringArray({}));
  std::vector<float> a(3 * 5);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) - 7.5f;
  REQUIRE(w.AddF32("a", {3, 5}, a).ok());
  REQUIRE(w.AddTensor("q", {64}, kQ4_0, std::string(2 * 18, '\x11')).ok());
  return w;
}

TEST_CASE("every value type and tensor info round-trips through the writer", "[gguf]") {
  auto file = File::FromBytes(SampleWriter().Serialize(), "sample");
  REQUIRE(file.ok());
  const File& f = **file;
  CHECK(f.version() == 3);
  CHECK(f.alignment() == 32);
  CHECK(f.data_offset() % 32 == 0);
  CHECK(f.metadata().size() == 17);
  CHECK(*f.GetUint("u8") == 200);
  CHECK(*f.GetInt("i8") == -100);
  CHECK(*f.GetUint("u16") == 60000);
  CHECK(*f.GetInt("i16") == -30000);
  CHECK(*f.GetUint("u32") == 4000000000u);
  CHECK(*f.GetInt("i32") == -2000000000);
  CHECK(*f.GetFloat("f32") == static_cast<double>(0.1f));
  CHECK(*f.GetBool("yes"));
  CHECK(*f.GetString("name") == "tiny \xE2\x96\x81 model");
  CHECK(*f.GetUint("u64") == (1ull << 60));
  CHECK(*f.GetInt("i64") == -(1ll << 60));
  CHECK(*f.GetFloat("f64") == 1e300);
  CHECK(*f.GetStringArray("strs") == std::vector<std::string>{"a", "", "\xF0\x9F\x98\x80"});
  CHECK(*f.GetIntArray("ints") == std::vector<int64_t>{1, -2, 3});
  CHECK(*f.GetIntArray("uints") == std::vector<int64_t>{7, 8});
  CHECK(*f.GetFloatArray("floats") == std::vector<float>{0.5f, -1.25f});
  CHECK(f.GetStringArray("empty")->empty());
  CHECK(f.FindValue("strs")->array_size() == 3);

  REQUIRE(f.tensors().size() == 2);
  const TensorInfo* a = f.FindTensor("a");
  REQUIRE(a != nullptr);
  CHECK(a->dims == std::vector<int64_t>{3, 5});
  CHECK(a->n_elements == 15);
  CHECK(a->n_bytes == 60);
  CHECK(a->rows() == 5);
  CHECK(a->offset == 0);
  float a7;
  std::memcpy(&a7, a->data + 7 * 4, 4);
  CHECK(a7 == -0.5f);
  const TensorInfo* q = f.FindTensor("q");
  REQUIRE(q != nullptr);
  CHECK(q->tensor_type() == TensorType::kQ4_0);
  CHECK(q->offset == 64);  // 60 bytes rounded up to the alignment
  CHECK(q->n_bytes == 36);
  CHECK(q->data[35] == 0x11);
  CHECK(f.FindTensor("nope") == nullptr);
}

TEST_CASE("typed getters report missing keys and type mismatches", "[gguf]") {
  auto file = File::FromBytes(SampleWriter().Serialize(), "sample");
  REQUIRE(file.ok());
  const File& f = **file;
  CHECK(f.GetString("absent").status().code() == StatusCode::kNotFound);
  CHECK(Contains(f.GetString("absent").status(), "missing key 'absent'"));
  Status s = f.GetString("u32").status();
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(Contains(s, "key 'u32' is uint32, expected string"));
  CHECK(Contains(f.GetUint("i8").status(), "expected a value >= 0"));
  CHECK(Contains(f.GetUint("yes").status(), "is bool, expected an integer"));
  CHECK(f.GetInt("u64").ok());
  CHECK(Contains(f.GetFloat("u32").status(), "expected float32 or float64"));
  CHECK(Contains(f.GetBool("u8").status(), "expected bool"));
  CHECK(Contains(f.GetStringArray("ints").status(), "is array of int32, expected array of string"));
  CHECK(Contains(f.GetIntArray("floats").status(), "expected array of integers"));
  CHECK(Contains(f.GetFloatArray("strs").status(), "expected array of float32"));
  CHECK(Contains(f.GetStringArray("name").status(), "is string, expected array of string"));
}

TEST_CASE("a custom alignment places the data section and tensors on it", "[gguf]") {
  for (uint64_t alignment : {1, 8, 64, 256}) {
    Writer w(alignment);
    REQUIRE(w.AddF32("x", {3}, {1, 2, 3}).ok());
    REQUIRE(w.AddF32("y", {1}, {4}).ok());
    auto f = File::FromBytes(w.Serialize());
    REQUIRE(f.ok());
    CHECK((*f)->alignment() == alignment);
    CHECK((*f)->data_offset() % alignment == 0);
    CHECK((*f)->FindTensor("y")->offset % alignment == 0);
    float y;
    std::memcpy(&y, (*f)->FindTensor("y")->data, 4);
    CHECK(y == 4.0f);
  }
}

TEST_CASE("Open maps a real file and reports a missing one", "[gguf]") {
  const std::string path = std::string(SQZ_BINARY_DIR) + "/gguf_file_test_sample.gguf";
  REQUIRE(SampleWriter().WriteFile(path).ok());
  auto f = File::Open(path);
  REQUIRE(f.ok());
  CHECK((*f)->path() == path);
  CHECK(*(*f)->GetString("name") == "tiny \xE2\x96\x81 model");
  CHECK((*f)->FindTensor("q")->data[0] == 0x11);
  std::remove(path.c_str());

  auto missing = File::Open(path + ".absent");
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(Contains(missing.status(), "cannot open"));
  auto dir = File::Open(SQZ_BINARY_DIR);
  CHECK(dir.status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("bad magic, unsupported versions and big-endian files are rejected", "[gguf]") {
  std::string good = SampleWriter().Serialize();
  std::string bad = good;
  bad[0] = 'X';
  auto s = File::FromBytes(bad, "f").status();
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(Contains(s, "GGUF f: not a GGUF file: bad magic 58 47 55 46"));
  CHECK(Contains(File::FromBytes("GG", "f").status(), "only 2 bytes"));
  CHECK(Contains(File::FromBytes("", "f").status(), "only 0 bytes"));

  for (uint32_t version : {0u, 1u, 4u, 100u}) {
    std::string v = good;
    Poke<uint32_t>(&v, 4, version);
    s = File::FromBytes(v, "f").status();
    CHECK(s.code() == StatusCode::kUnimplemented);
    CHECK(Contains(s, "unsupported GGUF version " + std::to_string(version)));
  }
  std::string v2 = good;
  Poke<uint32_t>(&v2, 4, 2);
  CHECK(File::FromBytes(v2).ok());
  std::string be = good;
  Poke<uint32_t>(&be, 4, 0x03000000u);
  CHECK(Contains(File::FromBytes(be).status(), "big-endian"));
}

TEST_CASE("every truncation of a valid file is an error, never a crash", "[gguf]") {
  const std::string good = SampleWriter().Serialize();
  const uint64_t last_tensor_end = good.size();
  for (size_t n = 0; n < last_tensor_end; ++n) {
    auto f = File::FromBytes(good.substr(0, n), "t");
    INFO("prefix of " << n << " bytes");
    REQUIRE_FALSE(f.ok());
    CHECK(f.status().code() == StatusCode::kInvalidArgument);
  }
  CHECK(Contains(File::FromBytes(good.substr(0, 60), "t").status(), "truncated or corrupt file"));
  CHECK(Contains(File::FromBytes(good.substr(0, 300), "t").status(), "truncated file: "));
  CHECK(Contains(File::FromBytes(good.substr(0, good.size() - 1), "t").status(),
                 "tensor 'q' data [64, 100) is out of range"));
}

TEST_CASE("random corruption of a valid file never crashes", "[gguf]") {
  const std::string good = SampleWriter().Serialize();
  std::mt19937 rng(1234);
  int errors = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bad = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    auto f = File::FromBytes(bad);
    if (!f.ok()) {
      ++errors;
      continue;
    }
    for (const TensorInfo& t : (*f)->tensors()) {  // every accepted tensor lies in the file
      CHECK((*f)->data_offset() + t.offset + t.n_bytes <= bad.size());
    }
  }
  CHECK(errors > 100);
}

// Header (24 bytes) of a file with n_tensors tensors and n_kv metadata pairs.
std::string Header(uint64_t n_tensors, uint64_t n_kv) {
  std::string h = "GGUF";
  h.resize(24);
  Poke<uint32_t>(&h, 4, 3);
  Poke<uint64_t>(&h, 8, n_tensors);
  Poke<uint64_t>(&h, 16, n_kv);
  return h;
}

TEST_CASE("inconsistent counts, types and keys are rejected with clear messages", "[gguf]") {
  CHECK(Contains(File::FromBytes(Header(0, 1ull << 40)).status(), "metadata count 1099511627776"));
  CHECK(Contains(File::FromBytes(Header(1ull << 40, 0)).status(), "tensor count 1099511627776"));
  CHECK(File::FromBytes(Header(0, 0)).ok());  // an empty file is valid

  Writer dup;
  dup.AddUint32("k", 1);
  dup.AddUint32("k", 2);
  CHECK(Contains(File::FromBytes(dup.Serialize()).status(), "duplicate metadata key 'k'"));

  // Unknown value type: the type field follows the 24-byte header and the key "k" (8 + 1 bytes).
  Writer one;
  one.AddUint32("k", 1);
  std::string bad = one.Serialize();
  Poke<uint32_t>(&bad, 33, 13);
  CHECK(Contains(File::FromBytes(bad).status(), "key 'k' has unknown value type 13"));

  Writer arr;
  arr.Add("a", Value::IntArray(ValueType::kInt32, {1, 2}));
  bad = arr.Serialize();
  Poke<uint32_t>(&bad, 37, 99);  // element type
  CHECK(Contains(File::FromBytes(bad).status(), "array 'a' has unknown element type 99"));
  Poke<uint32_t>(&bad, 37, 9);
  auto nested = File::FromBytes(bad).status();
  CHECK(nested.code() == StatusCode::kUnimplemented);
  CHECK(Contains(nested, "array of arrays"));
  bad = arr.Serialize();
  Poke<uint64_t>(&bad, 41, 1ull << 62);  // length
  CHECK(Contains(File::FromBytes(bad).status(), "does not fit in the"));

  Writer b;
  b.AddBool("b", true);
  bad = b.Serialize();
  bad[37] = 2;
  CHECK(Contains(File::FromBytes(bad).status(), "is a bool stored as 2"));

  Writer s;
  s.AddString("s", "abc");
  bad = s.Serialize();
  Poke<uint64_t>(&bad, 37, 1ull << 50);  // string length
  CHECK(Contains(File::FromBytes(bad).status(), "value of key 's' needs 1125899906842624 bytes"));
}

TEST_CASE("bad alignment values are rejected", "[gguf]") {
  Writer w;
  w.AddUint32("general.alignment", 48);
  CHECK(Contains(File::FromBytes(w.Serialize()).status(), "general.alignment 48 is not a power"));
  Writer z;
  z.AddUint32("general.alignment", 0);
  CHECK_FALSE(File::FromBytes(z.Serialize()).ok());
  Writer t;
  t.AddString("general.alignment", "32");
  CHECK(Contains(File::FromBytes(t.Serialize()).status(),
                 "key 'general.alignment' is string, expected uint32"));
}

TEST_CASE("bad tensor infos are rejected with clear messages", "[gguf]") {
  auto with_info = [](std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    Writer w;
    REQUIRE(w.AddF32("ok", {4}, {1, 2, 3, 4}).ok());
    w.AddRawTensorInfo("t", std::move(dims), type, offset);
    return File::FromBytes(w.Serialize(), "f").status();
  };
  CHECK(Contains(with_info({4}, 77, 0), "tensor 't' has unknown ggml type 77"));
  CHECK(Contains(with_info({4}, 4, 0), "unknown ggml type 4"));  // removed Q4_2
  CHECK(Contains(with_info({1, 1, 1, 1, 1}, kF32, 0), "has 5 dimensions (at most 4)"));
  CHECK(Contains(with_info({33, 2}, kQ4_0, 0),
                 "rows of 33 elements, not a multiple of Q4_0's block size 32"));
  CHECK(Contains(with_info({4}, kF32, 16), "data offset 16, not a multiple of the alignment 32"));
  CHECK(Contains(with_info({4}, kF32, 64), "tensor 't' data [64, 80) is out of range"));
  CHECK(Contains(with_info({1ull << 62, 1ull << 62}, kF32, 0), "too many elements"));
  CHECK(Contains(with_info({1ull << 62}, kF32, 0), "too large"));
  CHECK(Contains(with_info({1ull << 63}, kF32, 0), "too many elements"));
  // Overlapping tensors are accepted (ggml does not forbid aliasing reads).
  CHECK(with_info({4}, kF32, 0).ok());

  Writer dup;
  REQUIRE(dup.AddF32("x", {1}, {1}).ok());
  REQUIRE(dup.AddF32("x", {1}, {2}).ok());
  CHECK(Contains(File::FromBytes(dup.Serialize()).status(), "duplicate tensor 'x'"));
}

}  // namespace
}  // namespace sqz::gguf
