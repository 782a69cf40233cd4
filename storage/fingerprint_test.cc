#include "storage/fingerprint.h"

#include <catch2/catch.hpp>

#include "engine/model/hf_writer.h"

namespace sqz {
namespace {

ModelConfig TinyConfig() {
  ModelConfig c;
  c.hidden = 16;
  c.intermediate = 24;
  c.layers = 2;
  c.q_heads = 4;
  c.kv_heads = 2;
  c.head_dim = 4;
  c.vocab = 37;
  c.max_positions = 128;
  return c;
}

Model TinyModel(const ModelConfig& c, uint64_t seed) { return Model(c, RandomWeights(c, seed)); }

TEST_CASE("the identity of a model is deterministic and sees config, tensors and weights") {
  const ModelConfig c = TinyConfig();
  const ModelIdentity a = IdentifyModel(TinyModel(c, 1));
  const ModelIdentity again = IdentifyModel(TinyModel(c, 1));
  CHECK(a == again);
  CHECK(a.Hash() == again.Hash());
  CHECK(a.HashHex().size() == 16);
  CHECK(DescribeIdentityChange(a, again).empty());
  CHECK(a.config_summary.find("L=2") != std::string::npos);
  CHECK(a.config_summary.find("heads=4/2") != std::string::npos);

  SECTION("other weights, same shapes") {
    const ModelIdentity b = IdentifyModel(TinyModel(c, 2));
    CHECK(b.config_summary == a.config_summary);
    CHECK(b.tensors_digest == a.tensors_digest);
    CHECK(b.weights_digest != a.weights_digest);
    CHECK(b.Hash() != a.Hash());
    CHECK(DescribeIdentityChange(a, b).rfind("weights differ", 0) == 0);
  }
  SECTION("one weight changed by one ulp") {
    Model m = TinyModel(c, 1);
    m.weights.layers[1].w_down[7] = std::nextafter(m.weights.layers[1].w_down[7], 1e9f);
    CHECK(IdentifyModel(m).weights_digest != a.weights_digest);
  }
  SECTION("a RoPE hyper-parameter changes the config summary") {
    ModelConfig c2 = c;
    c2.rope.theta = 500000.0f;
    const ModelIdentity b = IdentifyModel(TinyModel(c2, 1));
    CHECK(b.config_summary != a.config_summary);
    CHECK(DescribeIdentityChange(a, b).find("config differs") != std::string::npos);
  }
  SECTION("the checkpoint dtype changes the tensor digest only") {
    ModelConfig c2 = c;
    c2.torch_dtype = "bfloat16";
    const ModelIdentity b = IdentifyModel(TinyModel(c2, 1));
    CHECK(b.config_summary == a.config_summary);
    CHECK(b.tensors_digest != a.tensors_digest);
    CHECK(b.weights_digest == a.weights_digest);
    CHECK(DescribeIdentityChange(a, b).find("tensor names/shapes/dtypes differ") !=
          std::string::npos);
  }
  SECTION("a given weights digest is used as is") {
    const ModelIdentity b = IdentifyModel(TinyModel(c, 1), 0x1234u);
    CHECK(b.weights_digest == 0x1234u);
    CHECK(b.tensors_digest == a.tensors_digest);
  }
}

TEST_CASE("the tensor digest depends on names, dtypes, shapes and their order") {
  const std::vector<TensorSignature> base = {{"a.weight", "bf16", {3, 127}},
                                             {"b.weight", "f32", {129}}};
  const uint64_t d = DigestTensors(base);
  CHECK(DigestTensors(base) == d);
  auto changed = base;
  changed[0].shape = {127, 3};
  CHECK(DigestTensors(changed) != d);
  changed = base;
  changed[1].dtype = "f16";
  CHECK(DigestTensors(changed) != d);
  changed = base;
  changed[0].name = "a.weighT";
  CHECK(DigestTensors(changed) != d);
  changed = {base[1], base[0]};
  CHECK(DigestTensors(changed) != d);
  // Length-prefixed fields: moving a character between name and dtype changes the digest.
  CHECK(DigestTensors({{"ab", "c", {1}}}) != DigestTensors({{"a", "bc", {1}}}));
  CHECK(DigestTensors({}) != DigestTensors({{"", "", {}}}));
}

TEST_CASE("Hash covers every field and is stable across builds") {
  ModelIdentity id;
  id.config_summary = "llama L=32 hidden=4096";
  id.tensors_digest = 0x0123456789abcdefULL;
  id.weights_digest = 0xfedcba9876543210ULL;
  const uint64_t h = id.Hash();
  // Pins the recipe: records on disk hold this value. Changing it needs a new kFormatVersion.
  CHECK(id.HashHex() == "8e7ed7b838cea54a");
  ModelIdentity other = id;
  other.format_version = 2;
  CHECK(other.Hash() != h);
  CHECK(DescribeIdentityChange(id, other).find("format version differs (1 vs 2)") !=
        std::string::npos);
  other = id;
  other.tensors_digest ^= 1;
  CHECK(other.Hash() != h);
  other = id;
  other.weights_digest ^= 1ULL << 63;
  CHECK(other.Hash() != h);
  other = id;
  other.config_summary += " ";
  CHECK(other.Hash() != h);
}

}  // namespace
}  // namespace sqz
