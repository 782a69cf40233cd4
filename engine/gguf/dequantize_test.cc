// Unit tests of the block formats on hand-built blocks. The bit-exact comparison with the gguf
// Python package on real and generated blocks is tests/gguf/dequant_parity_test.cc.
#include "engine/gguf/dequantize.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace sqz::gguf {
namespace {

uint32_t T(TensorType t) { return static_cast<uint32_t>(t); }

uint16_t Half(float f) {  // exact for the values used here (small integers and powers of two)
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t sign = (bits >> 16) & 0x8000;
  const int exp = static_cast<int>((bits >> 23) & 0xFF) - 127 + 15;
  return static_cast<uint16_t>(sign | (exp << 10) | ((bits >> 13) & 0x3FF));
}

void PutHalf(uint8_t* p, float f) {
  const uint16_t h = Half(f);
  std::memcpy(p, &h, 2);
}

TEST_CASE("Fp16ToFp32 is exact on every half value", "[gguf]") {
  CHECK(Fp16ToFp32(0x3C00) == 1.0f);
  CHECK(Fp16ToFp32(0xC000) == -2.0f);
  CHECK(Fp16ToFp32(0x7BFF) == 65504.0f);
  CHECK(Fp16ToFp32(0x0001) == std::ldexp(1.0f, -24));     // smallest subnormal
  CHECK(Fp16ToFp32(0x03FF) == std::ldexp(1023.0f, -24));  // largest subnormal
  CHECK(Fp16ToFp32(0x0400) == std::ldexp(1.0f, -14));     // smallest normal
  CHECK(std::signbit(Fp16ToFp32(0x8000)));
  CHECK(Fp16ToFp32(0x7C00) == std::numeric_limits<float>::infinity());
  CHECK(std::isnan(Fp16ToFp32(0x7E00)));
  // Every finite half equals sign * mantissa * 2^exponent computed independently.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;
    if (e == 0x1F) continue;
    const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -24)
                             : std::ldexp(static_cast<float>(m + 1024), static_cast<int>(e) - 25);
    const float want = (h & 0x8000) ? -mag : mag;
    REQUIRE(Fp16ToFp32(static_cast<uint16_t>(h)) == want);
  }
}

TEST_CASE("Bf16ToFp32 keeps the high 16 bits of a float", "[gguf]") {
  CHECK(Bf16ToFp32(0x3F80) == 1.0f);
  CHECK(Bf16ToFp32(0xC2F7) == -123.5f);
  CHECK(std::isinf(Bf16ToFp32(0x7F80)));
}

TEST_CASE("Q4_0 and Q4_1 blocks: low nibbles are elements 0..15, high nibbles 16..31", "[gguf]") {
  uint8_t b[20] = {};
  PutHalf(b, 0.5f);
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  REQUIRE(Dequantize(T(TensorType::kQ4_0), b, 32, y).ok());
  for (int j = 0; j < 16; ++j) {
    CHECK(y[j] == (j - 8) * 0.5f);
    CHECK(y[j + 16] == (15 - j - 8) * 0.5f);
  }
  PutHalf(b, 2.0f);
  PutHalf(b + 2, -3.0f);
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  REQUIRE(Dequantize(T(TensorType::kQ4_1), b, 32, y).ok());
  for (int j = 0; j < 16; ++j) {
    CHECK(y[j] == j * 2.0f - 3.0f);
    CHECK(y[j + 16] == (15 - j) * 2.0f - 3.0f);
  }
}

TEST_CASE("Q5_0 takes bit j of qh as the fifth bit of element j", "[gguf]") {
  uint8_t b[22] = {};
  PutHalf(b, 1.0f);
  const uint32_t qh = 0x80000001u;  // element 0 and element 31 get +16
  std::memcpy(b + 2, &qh, 4);
  float y[32];
  REQUIRE(Dequantize(T(TensorType::kQ5_0), b, 32, y).ok());
  CHECK(y[0] == 0.0f);    // (0 | 16) - 16
  CHECK(y[1] == -16.0f);  // 0 - 16
  CHECK(y[31] == 0.0f);   // high nibble 0 | 16, minus 16
}

TEST_CASE("Q8_0 is a scale times signed bytes", "[gguf]") {
  uint8_t b[34];
  PutHalf(b, 0.25f);
  for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j * 8 - 128));
  float y[32];
  REQUIRE(Dequantize(T(TensorType::kQ8_0), b, 32, y).ok());
  for (int j = 0; j < 32; ++j) CHECK(y[j] == (j * 8 - 128) * 0.25f);
}

TEST_CASE("Q6_K: element 0 uses scale 0 and the low bits of ql[0] and qh[0]", "[gguf]") {
  uint8_t b[210] = {};
  for (int k = 0; k < 16; ++k) b[192 + k] = static_cast<uint8_t>(k + 1);  // scales 1..16
  PutHalf(b + 208, 1.0f);
  b[0] = 0x3F;    // ql[0]: element 0 low nibble 15, element 64 high nibble 3
  b[128] = 0x03;  // qh[0]: element 0 gets high bits 3
  std::vector<float> y(256);
  REQUIRE(Dequantize(T(TensorType::kQ6_K), b, 256, y.data()).ok());
  CHECK(y[0] == 1.0f * (63 - 32));
  CHECK(y[64] == 5.0f * (3 - 32));  // scale index 4
  CHECK(y[255] == 16.0f * -32);
}

TEST_CASE("Dequantize rejects unsupported types and partial blocks", "[gguf]") {
  uint8_t b[292] = {};
  float y[256];
  Status s = Dequantize(T(TensorType::kIQ2_XXS), b, 256, y);
  CHECK(s.code() == StatusCode::kUnimplemented);
  CHECK(s.message().find("cannot dequantize ggml type IQ2_XXS") != std::string::npos);
  CHECK(Dequantize(77, b, 1, y).message().find("type 77") != std::string::npos);
  s = Dequantize(T(TensorType::kQ4_K), b, 100, y);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("not a multiple of its block size 256") != std::string::npos);
  CHECK_FALSE(Dequantize(T(TensorType::kF32), b, -1, y).ok());
  for (TensorType t :
       {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ4_0, TensorType::kQ4_1,
        TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ8_0, TensorType::kQ2_K,
        TensorType::kQ3_K, TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K}) {
    CHECK(CanDequantize(T(t)));
  }
  CHECK_FALSE(CanDequantize(T(TensorType::kQ8_K)));
}

TEST_CASE("DequantizeTensor equals block-by-block Dequantize", "[gguf]") {
  // 3 * 4096 + 129 Q8_0 blocks.
  const int64_t blocks = 3 * 4096 + 129;
  std::string data(static_cast<size_t>(blocks * 34), '\0');
  std::mt19937 rng(7);
  for (int64_t i = 0; i < blocks; ++i) {
    uint8_t* b = reinterpret_cast<uint8_t*>(data.data()) + i * 34;
    PutHalf(b, std::ldexp(1.0f, static_cast<int>(rng() % 10) - 5));
    for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(rng());
  }
  TensorInfo t;
  t.name = "t";
  t.dims = {32, blocks};
  t.type = T(TensorType::kQ8_0);
  t.n_elements = 32 * blocks;
  t.n_bytes = static_cast<int64_t>(data.size());
  t.data = reinterpret_cast<const uint8_t*>(data.data());
  auto all = DequantizeTensor(t);
  REQUIRE(all.ok());
  std::vector<float> one(32);
  for (int64_t i = 0; i < blocks; i += 97) {
    REQUIRE(Dequantize(t.type, t.data + i * 34, 32, one.data()).ok());
    REQUIRE(std::memcmp(one.data(), all->data() + i * 32, 128) == 0);
  }
  t.type = T(TensorType::kIQ1_S);
  CHECK(DequantizeTensor(t).status().message().find("tensor 't'") != std::string::npos);
}

}  // namespace
}  // namespace sqz::gguf
