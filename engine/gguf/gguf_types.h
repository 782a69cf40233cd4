// GGUF value types and ggml tensor types, numbered exactly as in the GGUF specification and ggml.h,
// with the block geometry of every tensor type so a reader can size and validate any tensor, even
// one whose type it cannot dequantize.
//
// Thread safety: pure functions and constant tables.
#pragma once

#include <cstdint>
#include <string_view>

namespace sqz::gguf {

// Type tag of a metadata value (GGUF spec: gguf_metadata_value_type).
enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// Whether v is one of the values above.
bool IsKnownValueType(uint32_t v);
// "uint8", ..., "array", "float64"; "unknown" for anything else.
std::string_view ValueTypeName(ValueType type);
// Bytes of one scalar of this type in a file (string and array: 0, they have variable size).
int ScalarSize(ValueType type);

// ggml tensor types (ggml.h enum ggml_type). Gaps are types ggml removed.
enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

// Block geometry: a row of a tensor is a whole number of blocks of block_size elements, each
// stored in type_size bytes.
struct TypeTraits {
  std::string_view name;  // "F32", "Q4_K", ... as ggml and the gguf Python package spell them
  int64_t block_size = 0;
  int64_t type_size = 0;
};

// Traits of a known type, or nullptr for a value that is not (or no longer) a ggml type.
const TypeTraits* FindTypeTraits(uint32_t type);
// Name of a known type, or "type N" for an unknown one (for messages).
std::string TensorTypeName(uint32_t type);

}  // namespace sqz::gguf
