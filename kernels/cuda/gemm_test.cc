#include "kernels/cuda/gemm.h"

#include <catch2/catch.hpp>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;
using testing::RandomFloats;
using testing::RelativeL2;

// Tolerances against cpu::MatMulTransB on the same bf16-rounded inputs: fp32 accumulation in
// another order (fp32 output: ~1e-6 typical, 1e-4 allowed); bf16 output adds one rounding (1e-2).
constexpr double kTolF32 = 1e-4;
constexpr double kTolBf16 = 1e-2;

struct Shape {
  int64_t m, n, k;
};

TEST_CASE("Gemm::MatMulTransB matches cpu::MatMulTransB (bf16 in, fp32/bf16 out, bias)", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  auto gemm_or = Gemm::Create();
  REQUIRE(gemm_or.ok());
  Gemm& gemm = **gemm_or;
  DeviceBuffer<char> workspace(Gemm::kRecommendedWorkspaceBytes);
  uint32_t seed = 1;
  std::vector<Shape> shapes;
  for (int64_t m : {1, 3, 127, 129}) {
    for (int64_t n : {3, 64, 129}) {
      for (int64_t k : {8, 64, 129}) shapes.push_back({m, n, k});
    }
  }
  shapes.push_back({16, 2048, 2048});
  shapes.push_back({1000, 576, 1536});
  for (const Shape& s : shapes) {
    for (bool with_bias : {false, true}) {
      const auto a = testing::RoundBf16(RandomFloats(s.m * s.k, seed++));
      const auto w = testing::RoundBf16(RandomFloats(s.n * s.k, seed++, 0.05f));
      const auto bias = testing::RoundBf16(RandomFloats(s.n, seed++));
      std::vector<float> want(s.m * s.n);
      cpu::MatMulTransB(a.data(), w.data(), with_bias ? bias.data() : nullptr, s.m, s.n, s.k,
                        want.data());
      DeviceBuffer<bf16> da(testing::ToBf16(a)), dw(testing::ToBf16(w));
      DeviceBuffer<float> dbias_f(bias), out_f(s.m * s.n);
      DeviceBuffer<bf16> dbias_b(testing::ToBf16(bias)), out_b(s.m * s.n);
      INFO("m=" << s.m << " n=" << s.n << " k=" << s.k << " bias=" << with_bias);
      Status st = gemm.MatMulTransB<float>(da.get(), dw.get(), with_bias ? dbias_f.get() : nullptr,
                                           s.m, s.n, s.k, out_f.get(), workspace.get(),
                                           workspace.size(), nullptr);
      INFO(st.ToString());
      REQUIRE(st.ok());
      REQUIRE(RelativeL2(out_f.Download(), want) < kTolF32);
      st =
          gemm.MatMulTransB<bf16>(da.get(), dw.get(), with_bias ? dbias_b.get() : nullptr, s.m, s.n,
                                  s.k, out_b.get(), workspace.get(), workspace.size(), nullptr);
      INFO(st.ToString());
      REQUIRE(st.ok());
      REQUIRE(RelativeL2(testing::ToFloat(out_b.Download()), want) < kTolBf16);
    }
  }
  // A shape seen before reuses its plan; without a workspace a new plan is made and still works.
  const size_t plans = gemm.cached_plans();
  const auto a = testing::RoundBf16(RandomFloats(3 * 64, 9001));
  const auto w = testing::RoundBf16(RandomFloats(64 * 64, 9002));
  std::vector<float> want(3 * 64);
  cpu::MatMulTransB(a.data(), w.data(), nullptr, 3, 64, 64, want.data());
  DeviceBuffer<bf16> da(testing::ToBf16(a)), dw(testing::ToBf16(w));
  DeviceBuffer<float> out(3 * 64);
  REQUIRE(gemm.MatMulTransB<float>(da.get(), dw.get(), nullptr, 3, 64, 64, out.get(),
                                   workspace.get(), workspace.size(), nullptr)
              .ok());
  REQUIRE(gemm.cached_plans() == plans);
  out.Poison();
  REQUIRE(gemm.MatMulTransB<float>(da.get(), dw.get(), nullptr, 3, 64, 64, out.get(), nullptr, 0,
                                   nullptr)
              .ok());
  REQUIRE(gemm.cached_plans() == plans + 1);
  REQUIRE(RelativeL2(out.Download(), want) < kTolF32);
}

TEST_CASE("Gemm::MatMulTransB rejects bad arguments with a clear message", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  auto gemm_or = Gemm::Create();
  REQUIRE(gemm_or.ok());
  Gemm& gemm = **gemm_or;
  DeviceBuffer<bf16> a(64), w(64);
  DeviceBuffer<float> out(64);
  DeviceBuffer<char> ws(1024);
  Status s =
      gemm.MatMulTransB<float>(a.get(), w.get(), nullptr, 1, 8, 0, out.get(), nullptr, 0, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("k=0") != std::string::npos);
  s = gemm.MatMulTransB<float>(nullptr, w.get(), nullptr, 1, 8, 8, out.get(), nullptr, 0, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  s = gemm.MatMulTransB<float>(a.get(), w.get(), nullptr, 1, 8, 8, out.get(), ws.get() + 1, 512,
                               nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("workspace") != std::string::npos);
  // m == 0 is a no-op.
  REQUIRE(gemm.MatMulTransB<float>(nullptr, nullptr, nullptr, 0, 8, 8, nullptr, nullptr, 0, nullptr)
              .ok());
}

}  // namespace
}  // namespace sqz::cuda
