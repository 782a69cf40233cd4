#include "kernels/cuda/gemv.h"

#include <catch2/catch.hpp>
#include <type_traits>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;
using testing::Make;
using testing::RandomFloats;
using testing::RelativeL2;

// fp32 sums of exact bf16 products: fp32 outputs within ~1e-6 of the CPU on the same bf16 inputs;
// bf16 outputs carry one rounding.
template <typename T>
constexpr double kTol = std::is_same_v<T, float> ? 1e-5 : 1e-2;

TEMPLATE_TEST_CASE("Gemv matches the CPU product for 1..8 rows and is batch invariant", "[cuda]",
                   float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 40;
  for (int64_t k : {8, 24, 4096, 14336}) {
    // n >= 16384 takes the one-warp-per-feature path, smaller n the 4-warp split.
    for (int64_t n : {1, 3, 127, 129, 1000, 16411}) {
      if (k == 14336 && n > 129) continue;
      if (k == 4096 && n > 1000) continue;
      for (int64_t m : {1, 2, 3, 5, 8}) {
        for (bool with_bias : {false, true}) {
          const auto a_f = testing::RoundBf16(RandomFloats(m * k, seed++));
          const auto w_f = testing::RoundBf16(RandomFloats(n * k, seed++, 0.05f));
          const auto b_f = testing::ToFloat(Make<TestType>(RandomFloats(n, seed++)));
          std::vector<float> want(m * n);
          cpu::MatMulTransB(a_f.data(), w_f.data(), with_bias ? b_f.data() : nullptr, m, n, k,
                            want.data());
          DeviceBuffer<bf16> a(testing::ToBf16(a_f)), w(testing::ToBf16(w_f));
          DeviceBuffer<TestType> b(Make<TestType>(b_f)), out(m * n), out1(n);
          REQUIRE(Gemv<TestType>(a.get(), w.get(), with_bias ? b.get() : nullptr, m, n, k,
                                 out.get(), nullptr)
                      .ok());
          const auto got = testing::ToFloat(out.Download());
          INFO("m " << m << " n " << n << " k " << k << " bias " << with_bias);
          CHECK(RelativeL2(got, want) < kTol<TestType>);
          // The last row alone: the same bits.
          REQUIRE(Gemv<TestType>(a.get() + (m - 1) * k, w.get(), with_bias ? b.get() : nullptr, 1,
                                 n, k, out1.get(), nullptr)
                      .ok());
          const auto got1 = testing::ToFloat(out1.Download());
          CHECK(std::equal(got1.begin(), got1.end(), got.end() - n));
        }
      }
    }
  }
}

TEST_CASE("Gemv refuses what it does not support", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  DeviceBuffer<bf16> a(64), w(64);
  DeviceBuffer<float> out(64);
  CHECK(GemvSupported(a.get(), w.get(), 1, 16));
  CHECK_FALSE(GemvSupported(a.get(), w.get(), 9, 16));
  CHECK_FALSE(GemvSupported(a.get(), w.get(), 0, 16));
  CHECK_FALSE(GemvSupported(a.get(), w.get(), 1, 12));
  CHECK_FALSE(GemvSupported(a.get() + 1, w.get(), 1, 16));
  const Status s = Gemv<float>(a.get(), w.get(), nullptr, 9, 2, 16, out.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("m <= 8") != std::string::npos);
  CHECK(Gemv<float>(a.get(), w.get(), nullptr, 1, 0, 16, out.get(), nullptr).code() ==
        StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sqz::cuda
