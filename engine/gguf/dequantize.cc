#include "engine/gguf/dequantize.h"

#include <cstring>
#include <string>

namespace sqz::gguf {
namespace {

uint16_t Load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// --- 32-element blocks --------------------------------------------------------------------------

// Q4_0: {f16 d; u8 qs[16]}: y[j] = (lo(qs[j]) - 8) * d, y[j + 16] = (hi(qs[j]) - 8) * d.
void BlockQ4_0(const uint8_t* b, float* y) {
  const float d = Fp16ToFp32(Load16(b));
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

// Q4_1: {f16 d; f16 m; u8 qs[16]}: y = q * d + m.
void BlockQ4_1(const uint8_t* b, float* y) {
  const float d = Fp16ToFp32(Load16(b));
  const float m = Fp16ToFp32(Load16(b + 2));
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
    y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// Q5_0: {f16 d; u8 qh[4]; u8 qs[16]}: 5-bit q = nibble | (bit j (or j + 16) of qh) << 4, y = (q -
// 16) * d.
void BlockQ5_0(const uint8_t* b, float* y) {
  const float d = Fp16ToFp32(Load16(b));
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const uint8_t h0 = ((qh >> j) << 4) & 0x10;
    const uint8_t h1 = (qh >> (j + 12)) & 0x10;
    y[j] = static_cast<float>(((qs[j] & 0x0F) | h0) - 16) * d;
    y[j + 16] = static_cast<float>(((qs[j] >> 4) | h1) - 16) * d;
  }
}

// Q5_1: {f16 d; f16 m; u8 qh[4]; u8 qs[16]}: y = q * d + m.
void BlockQ5_1(const uint8_t* b, float* y) {
  const float d = Fp16ToFp32(Load16(b));
  const float m = Fp16ToFp32(Load16(b + 2));
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const uint8_t h0 = ((qh >> j) << 4) & 0x10;
    const uint8_t h1 = (qh >> (j + 12)) & 0x10;
    y[j] = static_cast<float>((qs[j] & 0x0F) | h0) * d + m;
    y[j + 16] = static_cast<float>((qs[j] >> 4) | h1) * d + m;
  }
}

// Q8_0: {f16 d; i8 qs[32]}: y = q * d.
void BlockQ8_0(const uint8_t* b, float* y) {
  const float d = Fp16ToFp32(Load16(b));
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// --- 256-element super-blocks (k-quants) --------------------------------------------------------

// Q2_K: {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}: 16 sub-blocks of 16 with 4-bit scale and
// min, 2-bit q: y = (d * sc) * q - (dmin * m).
void BlockQ2_K(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  const float d = Fp16ToFp32(Load16(b + 80));
  const float dmin = Fp16ToFp32(Load16(b + 82));
  int is = 0;
  for (int n = 0; n < 256; n += 128, q += 32) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const uint8_t sc = scales[is++];
        const float dl = d * (sc & 0x0F), ml = dmin * (sc >> 4);
        for (int l = 0; l < 16; ++l) {
          *y++ = dl * static_cast<float>((q[l + 16 * half] >> shift) & 3) - ml;
        }
      }
    }
  }
}

// Q3_K: {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}: 16 sub-blocks of 16 with 6-bit signed
// scales (low 4 bits in scales[0..7], high 2 bits in scales[8..11]), 3-bit q = 2 low bits from qs
// minus 4 when the hmask bit is clear: y = (d * (sc - 32)) * q.
void BlockQ3_K(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const uint8_t* packed = b + 96;
  const float d = Fp16ToFp32(Load16(b + 108));
  int sc[16];
  for (int s = 0; s < 16; ++s) {
    const int low = s < 8 ? (packed[s] & 0x0F) : (packed[s - 8] >> 4);
    const int high = (packed[8 + s % 4] >> (2 * (s / 4))) & 3;
    sc[s] = (low | (high << 4)) - 32;
  }
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < 256; n += 128, q += 32) {
    for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
      for (int half = 0; half < 2; ++half) {
        const float dl = d * static_cast<float>(sc[is++]);
        for (int l = 0; l < 16; ++l) {
          const int k = l + 16 * half;
          const int v = ((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4);
          *y++ = dl * static_cast<float>(v);
        }
      }
    }
  }
}

// The j-th (0..7) 6-bit scale and min packed in the 12 bytes of a Q4_K / Q5_K block.
void ScaleMinK4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K: {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}: 8 sub-blocks of 32, each
// y = (d * sc) * q - (dmin * m).
void BlockQ4_K(const uint8_t* b, float* y) {
  const float d = Fp16ToFp32(Load16(b));
  const float dmin = Fp16ToFp32(Load16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
    uint8_t sc, m;
    ScaleMinK4(is, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    ScaleMinK4(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0F) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
  }
}

// Q5_K: {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: as Q4_K with a fifth bit from qh.
void BlockQ5_K(const uint8_t* b, float* y) {
  const float d = Fp16ToFp32(Load16(b));
  const float dmin = Fp16ToFp32(Load16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32) {
    uint8_t sc, m;
    ScaleMinK4(is, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    ScaleMinK4(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) {
      *y++ = d1 * static_cast<float>((ql[l] & 0x0F) + ((qh[l] & u1) ? 16 : 0)) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      *y++ = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    }
    u1 <<= 2;
    u2 <<= 2;
  }
}

// Q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: 16 sub-blocks of 16, y = (d * sc) * (q -
// 32).
void BlockQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = Fp16ToFp32(Load16(b + 208));
  for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * static_cast<float>(q1);
      y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
      y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
      y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
    }
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn FindBlockFn(uint32_t type) {
  switch (static_cast<TensorType>(type)) {
    case TensorType::kQ4_0:
      return BlockQ4_0;
    case TensorType::kQ4_1:
      return BlockQ4_1;
    case TensorType::kQ5_0:
      return BlockQ5_0;
    case TensorType::kQ5_1:
      return BlockQ5_1;
    case TensorType::kQ8_0:
      return BlockQ8_0;
    case TensorType::kQ2_K:
      return BlockQ2_K;
    case TensorType::kQ3_K:
      return BlockQ3_K;
    case TensorType::kQ4_K:
      return BlockQ4_K;
    case TensorType::kQ5_K:
      return BlockQ5_K;
    case TensorType::kQ6_K:
      return BlockQ6_K;
    default:
      return nullptr;
  }
}

bool IsPlainFloat(uint32_t type) {
  const auto t = static_cast<TensorType>(type);
  return t == TensorType::kF32 || t == TensorType::kF16 || t == TensorType::kBF16;
}

// Converts blocks [b0, b1) of a supported type. Preconditions checked by the callers.
void DequantizeBlocks(uint32_t type, const TypeTraits& traits, const uint8_t* src, int64_t b0,
                      int64_t b1, float* dst) {
  const auto t = static_cast<TensorType>(type);
  if (t == TensorType::kF32) {
    std::memcpy(dst + b0, src + b0 * 4, static_cast<size_t>(b1 - b0) * 4);
  } else if (t == TensorType::kF16) {
    for (int64_t i = b0; i < b1; ++i) dst[i] = Fp16ToFp32(Load16(src + 2 * i));
  } else if (t == TensorType::kBF16) {
    for (int64_t i = b0; i < b1; ++i) dst[i] = Bf16ToFp32(Load16(src + 2 * i));
  } else {
    const BlockFn fn = FindBlockFn(type);
    for (int64_t i = b0; i < b1; ++i) {
      fn(src + i * traits.type_size, dst + i * traits.block_size);
    }
  }
}

}  // namespace

float Fp16ToFp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf / NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {
    // Subnormal half: normalise the mantissa into a normal float.
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400) == 0);
    bits = sign | static_cast<uint32_t>(112 - e) << 23 | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float Bf16ToFp32(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

bool CanDequantize(uint32_t type) { return IsPlainFloat(type) || FindBlockFn(type) != nullptr; }

Status Dequantize(uint32_t type, const uint8_t* src, int64_t n, float* dst) {
  const TypeTraits* traits = FindTypeTraits(type);
  if (traits == nullptr || !CanDequantize(type)) {
    return UnimplementedError("cannot dequantize ggml type " + TensorTypeName(type) +
                              " (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, "
                              "Q3_K, Q4_K, Q5_K, Q6_K)");
  }
  if (n < 0 || n % traits->block_size != 0) {
    return InvalidArgumentError("cannot dequantize " + std::to_string(n) + " elements of " +
                                std::string(traits->name) + ": not a multiple of its block size " +
                                std::to_string(traits->block_size));
  }
  DequantizeBlocks(type, *traits, src, 0, n / traits->block_size, dst);
  return OkStatus();
}

Status DequantizeTensorTo(const TensorInfo& t, float* dst) {
  const TypeTraits* traits = FindTypeTraits(t.type);
  if (traits == nullptr || !CanDequantize(t.type)) {
    return Dequantize(t.type, t.data, t.n_elements, dst).WithContext("tensor '" + t.name + "'");
  }
  if (t.n_elements % traits->block_size != 0) {
    return Dequantize(t.type, t.data, t.n_elements, dst).WithContext("tensor '" + t.name + "'");
  }
  // Single-threaded on purpose: the whole 135M-parameter default model dequantizes in ~45 ms on
  // one core (memory bound), while OpenMP threads on a shared, oversubscribed machine were
  // measured 10x slower (docs/benchmarks/gguf.md).
  DequantizeBlocks(t.type, *traits, t.data, 0, t.n_elements / traits->block_size, dst);
  return OkStatus();
}

StatusOr<std::vector<float>> DequantizeTensor(const TensorInfo& t) {
  std::vector<float> out(static_cast<size_t>(t.n_elements));
  SQZ_RETURN_IF_ERROR(DequantizeTensorTo(t, out.data()));
  return out;
}

}  // namespace sqz::gguf
