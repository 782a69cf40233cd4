#include "engine/gguf/gguf_types.h"

#include <catch2/catch.hpp>
#include <string>

namespace sqz::gguf {
namespace {

TEST_CASE("tensor type traits follow ggml's block geometry", "[gguf]") {
  struct Want {
    TensorType type;
    const char* name;
    int64_t block, size;
  };
  for (const Want& w :
       {Want{TensorType::kF32, "F32", 1, 4}, Want{TensorType::kF16, "F16", 1, 2},
        Want{TensorType::kBF16, "BF16", 1, 2}, Want{TensorType::kQ4_0, "Q4_0", 32, 18},
        Want{TensorType::kQ4_1, "Q4_1", 32, 20}, Want{TensorType::kQ5_0, "Q5_0", 32, 22},
        Want{TensorType::kQ5_1, "Q5_1", 32, 24}, Want{TensorType::kQ8_0, "Q8_0", 32, 34},
        Want{TensorType::kQ2_K, "Q2_K", 256, 84}, Want{TensorType::kQ3_K, "Q3_K", 256, 110},
        Want{TensorType::kQ4_K, "Q4_K", 256, 144}, Want{TensorType::kQ5_K, "Q5_K", 256, 176},
        Want{TensorType::kQ6_K, "Q6_K", 256, 210}, Want{TensorType::kQ8_K, "Q8_K", 256, 292},
        Want{TensorType::kIQ4_NL, "IQ4_NL", 32, 18}, Want{TensorType::kMXFP4, "MXFP4", 32, 17}}) {
    const TypeTraits* t = FindTypeTraits(static_cast<uint32_t>(w.type));
    REQUIRE(t != nullptr);
    CHECK(t->name == w.name);
    CHECK(t->block_size == w.block);
    CHECK(t->type_size == w.size);
    CHECK(TensorTypeName(static_cast<uint32_t>(w.type)) == w.name);
  }
  for (uint32_t removed : {4u, 5u, 31u, 32u, 33u, 36u, 40u, 1000u}) {
    CHECK(FindTypeTraits(removed) == nullptr);
    CHECK(TensorTypeName(removed) == "type " + std::to_string(removed));
  }
}

TEST_CASE("value types: names, scalar sizes and the known range", "[gguf]") {
  CHECK(IsKnownValueType(0));
  CHECK(IsKnownValueType(12));
  CHECK_FALSE(IsKnownValueType(13));
  CHECK(ValueTypeName(ValueType::kFloat32) == "float32");
  CHECK(ValueTypeName(ValueType::kArray) == "array");
  CHECK(ValueTypeName(static_cast<ValueType>(99)) == "unknown");
  CHECK(ScalarSize(ValueType::kBool) == 1);
  CHECK(ScalarSize(ValueType::kInt16) == 2);
  CHECK(ScalarSize(ValueType::kFloat32) == 4);
  CHECK(ScalarSize(ValueType::kUint64) == 8);
  CHECK(ScalarSize(ValueType::kString) == 0);
}

}  // namespace
}  // namespace sqz::gguf
