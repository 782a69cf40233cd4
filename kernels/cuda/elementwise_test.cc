#include "kernels/cuda/elementwise.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <type_traits>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using testing::DeviceBuffer;
using testing::Make;
using testing::RandomFloats;
using testing::RelativeL2;
using testing::Seen;

// Tolerances (relative L2 against the fp32 CPU reference on the same, bf16-rounded, inputs):
// fp32 math throughout, so fp32 outputs agree to ~1e-6; bf16 outputs carry one rounding (2^-9).
template <typename T>
constexpr double kTol = std::is_same_v<T, float> ? 1e-5 : 1e-2;

TEMPLATE_TEST_CASE("EmbeddingLookup copies rows exactly and poisons bad ids", "[cuda]", float,
                   bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 1;
  for (int64_t vocab : {1, 3, 1000}) {
    for (int64_t d : {1, 3, 64, 129}) {
      for (int64_t n : {1, 3, 127}) {
        const auto table_f = RandomFloats(vocab * d, seed++);
        std::mt19937 gen(seed++);
        std::vector<int32_t> ids(n);
        for (auto& id : ids) id = static_cast<int32_t>(gen() % vocab);
        if (n >= 3) {
          ids[1] = static_cast<int32_t>(vocab);  // out of range
          ids[2] = -1;
        }
        DeviceBuffer<TestType> table(Make<TestType>(table_f));
        DeviceBuffer<int32_t> dids(ids);
        DeviceBuffer<TestType> out(n * d);
        REQUIRE(EmbeddingLookup(dids.get(), table.get(), n, vocab, d, out.get(), nullptr).ok());
        const auto got = testing::ToFloat(out.Download());
        const auto want = Seen<TestType>(table_f);
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < d; ++j) {
            const float g = got[i * d + j];
            if (ids[i] < 0 || ids[i] >= vocab) {
              REQUIRE(std::isnan(g));
            } else {
              REQUIRE(g == want[ids[i] * d + j]);
            }
          }
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("RmsNorm matches cpu::RmsNorm", "[cuda]", float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 100;
  for (int64_t n : {1, 3, 127, 129}) {
    for (int64_t d : {1, 3, 64, 127, 129, 1000, 4096}) {
      const auto x = Seen<TestType>(RandomFloats(n * d, seed++, 3.0f));
      const auto w = Seen<TestType>(RandomFloats(d, seed++));
      std::vector<float> want(n * d);
      cpu::RmsNorm(x.data(), w.data(), n, d, 1e-5f, want.data());
      DeviceBuffer<TestType> dx(Make<TestType>(x)), dw(Make<TestType>(w)), dy(n * d);
      REQUIRE(RmsNorm(dx.get(), dw.get(), n, d, 1e-5f, dy.get(), nullptr).ok());
      INFO("n=" << n << " d=" << d);
      REQUIRE(RelativeL2(testing::ToFloat(dy.Download()), want) < kTol<TestType>);
      // In place (y aliases x).
      REQUIRE(RmsNorm(dx.get(), dw.get(), n, d, 1e-5f, dx.get(), nullptr).ok());
      REQUIRE(RelativeL2(testing::ToFloat(dx.Download()), want) < kTol<TestType>);
    }
  }
}

TEMPLATE_TEST_CASE("ApplyRope matches cpu::ApplyRope inside a packed row", "[cuda]", float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  cpu::RopeParams llama3;
  llama3.theta = 500000.0f;
  llama3.llama3_factor = 8.0f;
  cpu::RopeParams plain;
  uint32_t seed = 200;
  for (const auto& params : {plain, llama3}) {
    for (int64_t d : {2, 8, 64, 128}) {
      for (int64_t heads : {1, 3, 8}) {
        for (int64_t n : {1, 3, 129}) {
          // A packed row: the rotated heads, then 5 more values that must stay untouched.
          const int64_t stride = heads * d + 5;
          const auto x = Seen<TestType>(RandomFloats(n * stride, seed++));
          std::mt19937 gen(seed++);
          std::vector<int32_t> pos(n);
          for (auto& p : pos) p = static_cast<int32_t>(gen() % 131072);
          pos[0] = 0;
          std::vector<float> inv_freq(d / 2);
          cpu::RopeInvFreq(params, d, inv_freq.data());
          std::vector<float> want = x;
          std::vector<float> packed(n * heads * d);
          for (int64_t t = 0; t < n; ++t) {
            std::copy_n(x.begin() + t * stride, heads * d, packed.begin() + t * heads * d);
          }
          cpu::ApplyRope(packed.data(), pos.data(), n, heads, d, inv_freq.data());
          for (int64_t t = 0; t < n; ++t) {
            std::copy_n(packed.begin() + t * heads * d, heads * d, want.begin() + t * stride);
          }
          DeviceBuffer<TestType> dx(Make<TestType>(x));
          DeviceBuffer<int32_t> dpos(pos);
          DeviceBuffer<float> dinv(inv_freq);
          REQUIRE(ApplyRope(dx.get(), dpos.get(), n, heads, d, stride, dinv.get(), nullptr).ok());
          const auto got = testing::ToFloat(dx.Download());
          INFO("d=" << d << " heads=" << heads << " n=" << n);
          REQUIRE(RelativeL2(got, want) < kTol<TestType>);
          for (int64_t t = 0; t < n; ++t) {
            for (int64_t j = heads * d; j < stride; ++j)
              REQUIRE(got[t * stride + j] == x[t * stride + j]);
          }
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("SiluMul, SwiGlu and AddInPlace match the CPU ops", "[cuda]", float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 300;
  for (int64_t n : {1, 3, 127, 129, 1000, 100003}) {
    const auto g = Seen<TestType>(RandomFloats(n, seed++, 4.0f));
    const auto u = Seen<TestType>(RandomFloats(n, seed++));
    std::vector<float> want(n);
    cpu::SiluMul(g.data(), u.data(), n, want.data());
    DeviceBuffer<TestType> dg(Make<TestType>(g)), du(Make<TestType>(u)), dout(n);
    REQUIRE(SiluMul(dg.get(), du.get(), n, dout.get(), nullptr).ok());
    REQUIRE(RelativeL2(testing::ToFloat(dout.Download()), want) < kTol<TestType>);

    std::vector<float> sum = g;
    cpu::AddInPlace(sum.data(), u.data(), n);
    REQUIRE(AddInPlace(dg.get(), du.get(), n, nullptr).ok());
    REQUIRE(RelativeL2(testing::ToFloat(dg.Download()), sum) < kTol<TestType>);
  }
  for (int64_t rows : {1, 3, 129}) {
    for (int64_t cols : {1, 3, 64, 1000}) {
      const auto gu = Seen<TestType>(RandomFloats(rows * 2 * cols, seed++, 3.0f));
      std::vector<float> want(rows * cols);
      for (int64_t r = 0; r < rows; ++r) {
        cpu::SiluMul(gu.data() + r * 2 * cols, gu.data() + r * 2 * cols + cols, cols,
                     want.data() + r * cols);
      }
      DeviceBuffer<TestType> dgu(Make<TestType>(gu)), dout(rows * cols);
      REQUIRE(SwiGlu(dgu.get(), rows, cols, dout.get(), nullptr).ok());
      INFO("rows=" << rows << " cols=" << cols);
      REQUIRE(RelativeL2(testing::ToFloat(dout.Download()), want) < kTol<TestType>);
    }
  }
}

TEST_CASE("Convert rounds float to bf16 to nearest even and back exactly", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  for (int64_t n : {1, 3, 129, 100003}) {
    auto x = RandomFloats(n, 400 + static_cast<uint32_t>(n), 10.0f);
    x[0] = 1.00390625f;  // exactly halfway between two bf16 values: rounds to even (1.0)
    DeviceBuffer<float> dx(x), back(n);
    DeviceBuffer<bf16> db(n);
    REQUIRE(Convert(dx.get(), n, db.get(), nullptr).ok());
    REQUIRE(Convert(db.get(), n, back.get(), nullptr).ok());
    const auto got = back.Download();
    const auto want = testing::RoundBf16(x);
    REQUIRE(got[0] == 1.0f);
    for (int64_t i = 0; i < n; ++i) REQUIRE(got[i] == want[i]);
  }
}

TEST_CASE("Elementwise launchers reject bad shapes with the op's name", "[cuda]") {
  // Argument checks come before any launch, so they run without a GPU too.
  float* p = reinterpret_cast<float*>(0x1000);
  const int32_t* ids = reinterpret_cast<const int32_t*>(0x1000);
  Status s = RmsNorm<float>(p, p, 3, 0, 1e-5f, p, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("RmsNorm") != std::string::npos);
  s = ApplyRope<float>(p, ids, 3, 2, 7, 14, p, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("even") != std::string::npos);
  s = ApplyRope<float>(p, ids, 3, 2, 8, 15, p, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("row_stride") != std::string::npos);
  s = EmbeddingLookup<float>(ids, p, 3, 0, 4, p, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(SiluMul<float>(p, p, -1, p, nullptr).code() == StatusCode::kInvalidArgument);
  REQUIRE(SiluMul<float>(nullptr, p, 4, p, nullptr).code() == StatusCode::kInvalidArgument);
  REQUIRE(SwiGlu<float>(p, 2, 0, p, nullptr).code() == StatusCode::kInvalidArgument);
  REQUIRE(AddInPlace<float>(p, nullptr, 4, nullptr).code() == StatusCode::kInvalidArgument);
  REQUIRE(Convert<float, bf16>(p, -2, nullptr, nullptr).code() == StatusCode::kInvalidArgument);
  // n == 0 is a valid no-op.
  REQUIRE(SiluMul<float>(nullptr, nullptr, 0, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace sqz::cuda
