#include "engine/model/safetensors.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>

#include "engine/model/testing/temp_dir.h"

namespace sqz {
namespace {

using testing::TempDir;

// A safetensors file with the given header text and `data_bytes` zero bytes of data.
std::string RawFile(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

TEST_CASE("Safetensors round trip in F32, BF16 and F16 with awkward shapes") {
  TempDir dir;
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (TensorDType dtype : {TensorDType::kF32, TensorDType::kBF16, TensorDType::kF16}) {
    std::vector<float> a(3 * 127), b(1), c(129);
    for (auto* v : {&a, &b, &c}) {
      for (float& x : *v) x = u(gen);
    }
    std::vector<TensorToWrite> ts = {
        {"a", {3, 127}, a, dtype}, {"b", {1}, b, dtype}, {"c.weight", {129}, c, dtype}};
    REQUIRE(WriteSafetensors(dir.File("x.safetensors"), ts).ok());
    auto f = SafetensorsFile::Open(dir.File("x.safetensors"));
    REQUIRE(f.ok());
    CHECK((*f)->tensors().size() == 3);
    CHECK((*f)->Find("missing") == nullptr);
    for (const TensorToWrite& t : ts) {
      const TensorView* v = (*f)->Find(t.name);
      REQUIRE(v != nullptr);
      CHECK(v->shape == t.shape);
      CHECK(v->dtype == dtype);
      std::vector<float> back(v->NumElements());
      REQUIRE(ToFloat32(*v, back.data()).ok());
      for (size_t i = 0; i < back.size(); ++i) {
        const float want = dtype == TensorDType::kF32    ? t.data[i]
                           : dtype == TensorDType::kBF16 ? Bf16ToFloat(FloatToBf16(t.data[i]))
                                                         : F16ToFloat(FloatToF16(t.data[i]));
        CHECK(back[i] == want);
        // Narrowing keeps 8 (bf16) or 11 (f16) significant bits.
        const float tol = dtype == TensorDType::kBF16 ? 1.0f / 256 : 1.0f / 2048;
        CHECK(std::fabs(back[i] - t.data[i]) <= tol * std::fabs(t.data[i]));
      }
    }
  }
}

TEST_CASE("Half conversions: exact values, rounding to nearest even, specials") {
  CHECK(F16ToFloat(0x3c00) == 1.0f);
  CHECK(F16ToFloat(0xc000) == -2.0f);
  CHECK(F16ToFloat(0x7bff) == 65504.0f);
  CHECK(F16ToFloat(0x0001) == std::ldexp(1.0f, -24));
  CHECK(std::isinf(F16ToFloat(0x7c00)));
  CHECK(std::isnan(F16ToFloat(0x7e00)));
  CHECK(FloatToF16(1.0f) == 0x3c00);
  CHECK(FloatToF16(65504.0f) == 0x7bff);
  CHECK(FloatToF16(1e6f) == 0x7c00);
  CHECK(FloatToF16(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(FloatToF16(std::ldexp(1.0f, -26)) == 0x0000);
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0).
  CHECK(FloatToF16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
  CHECK(FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
  CHECK(Bf16ToFloat(0x3f80) == 1.0f);
  CHECK(FloatToBf16(1.0f) == 0x3f80);
  CHECK(FloatToBf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);  // tie to even
  CHECK(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);
  CHECK(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf("")))));
  // Every finite half survives a round trip through float.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if (((h >> 10) & 0x1f) == 0x1f) continue;
    REQUIRE(FloatToF16(F16ToFloat(static_cast<uint16_t>(h))) == h);
  }
}

void ExpectOpenError(const TempDir& dir, const std::string& bytes, StatusCode code,
                     const std::string& fragment) {
  dir.Write("bad.safetensors", bytes);
  auto f = SafetensorsFile::Open(dir.File("bad.safetensors"));
  REQUIRE_FALSE(f.ok());
  INFO(f.status().ToString());
  CHECK(f.status().code() == code);
  CHECK(f.status().message().find(fragment) != std::string::npos);
}

TEST_CASE("SafetensorsFile::Open rejects broken files with clear errors") {
  TempDir dir;
  auto missing = SafetensorsFile::Open(dir.File("nope.safetensors"));
  CHECK(missing.status().code() == StatusCode::kNotFound);
  ExpectOpenError(dir, "abc", StatusCode::kDataLoss, "too short");
  ExpectOpenError(dir, RawFile("{}", 0).substr(0, 9), StatusCode::kDataLoss,
                  "header length 2 exceeds");
  ExpectOpenError(dir, RawFile("{nope", 0), StatusCode::kInvalidArgument, "not a valid JSON");
  ExpectOpenError(dir, RawFile(R"({"t": {"shape": [2], "data_offsets": [0, 8]}})", 8),
                  StatusCode::kInvalidArgument, "\"t\": no dtype");
  ExpectOpenError(dir, RawFile(R"({"t": {"dtype": "F32", "data_offsets": [0, 8]}})", 8),
                  StatusCode::kInvalidArgument, "no shape");
  ExpectOpenError(dir, RawFile(R"({"t": {"dtype": "F32", "shape": [2]}})", 8),
                  StatusCode::kInvalidArgument, "data_offsets must be");
  ExpectOpenError(dir,
                  RawFile(R"({"t": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}})", 8),
                  StatusCode::kInvalidArgument, "unknown dtype \"Q9\"");
  ExpectOpenError(dir,
                  RawFile(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8),
                  StatusCode::kInvalidArgument, "needs 12");
  ExpectOpenError(dir,
                  RawFile(R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 10),
                  StatusCode::kDataLoss, "truncated");
  ExpectOpenError(dir,
                  RawFile(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                          12),
                  StatusCode::kInvalidArgument, "overlap");
}

TEST_CASE("ToFloat32 refuses dtypes other than F32/F16/BF16") {
  TempDir dir;
  dir.Write("i.safetensors",
            RawFile(R"({"ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}})", 16));
  auto f = SafetensorsFile::Open(dir.File("i.safetensors"));
  REQUIRE(f.ok());
  const TensorView* v = (*f)->Find("ids");
  REQUIRE(v != nullptr);
  float out[2];
  Status s = ToFloat32(*v, out);
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(s.message().find("\"ids\" has dtype I64") != std::string::npos);
}

TEST_CASE("WriteSafetensors checks its input") {
  TempDir dir;
  std::vector<float> d(5);
  std::vector<TensorToWrite> bad_shape = {{"t", {2, 3}, d, TensorDType::kF32}};
  CHECK(WriteSafetensors(dir.File("w"), bad_shape).code() == StatusCode::kInvalidArgument);
  std::vector<TensorToWrite> bad_dtype = {{"t", {5}, d, TensorDType::kOther}};
  CHECK(WriteSafetensors(dir.File("w"), bad_dtype).code() == StatusCode::kInvalidArgument);
  std::vector<TensorToWrite> ok = {{"t", {5}, d, TensorDType::kF32}};
  CHECK(WriteSafetensors(dir.File("no/such/dir/w"), ok).code() == StatusCode::kInternal);
}

}  // namespace
}  // namespace sqz
