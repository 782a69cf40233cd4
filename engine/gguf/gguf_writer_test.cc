#include "engine/gguf/gguf_writer.h"

#include <catch2/catch.hpp>
#include <string>

namespace sqz::gguf {
namespace {

bool Contains(const Status& s, const std::string& needle) {
  return s.message().find(needle) != std::string::npos;
}

TEST_CASE("Writer rejects tensors whose data does not match type and dims", "[gguf]") {
  Writer w;
  const uint32_t q8 = static_cast<uint32_t>(TensorType::kQ8_0);
  CHECK(Contains(w.AddTensor("a", {32}, 77, ""), "unknown ggml type 77"));
  CHECK(Contains(w.AddTensor("b", {31}, q8, std::string(34, '\0')),
                 "row length 31 is not a multiple of Q8_0's block size"));
  CHECK(Contains(w.AddTensor("c", {32, 3}, q8, std::string(34, '\0')),
                 "34 bytes of data, expected 102"));
  CHECK(w.AddTensor("d", {32, 3}, q8, std::string(102, '\0')).ok());
  CHECK(Contains(w.AddF32("e", {2, 2}, {1, 2, 3}), "12 bytes of data, expected 16"));
}

TEST_CASE("Writer output is laid out as the GGUF spec says", "[gguf]") {
  Writer w(16);
  REQUIRE(w.AddF32("t", {1}, {2.0f}).ok());
  const std::string b = w.Serialize();
  CHECK(b.substr(0, 4) == "GGUF");
  CHECK(b[4] == 3);           // version 3, little-endian
  CHECK(b[8] == 1);           // one tensor
  CHECK(b[16] == 1);          // one metadata pair: general.alignment
  CHECK(b.size() % 16 == 4);  // data section aligned to 16, then the 4-byte tensor
  auto f = File::FromBytes(b);
  REQUIRE(f.ok());
  CHECK(*(*f)->GetUint("general.alignment") == 16);
}

TEST_CASE("WriteFile reports an unwritable path", "[gguf]") {
  Writer w;
  Status s = w.WriteFile("/nonexistent-dir/x.gguf");
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(Contains(s, "cannot write GGUF file /nonexistent-dir/x.gguf"));
}

}  // namespace
}  // namespace sqz::gguf
