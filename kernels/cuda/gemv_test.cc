#include "kernels/cuda/gemv.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <type_traits>
#include <utility>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/model_ops.h"
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

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// Byte equality: also for buffers that keep their NaN poison where nothing was written.
bool SameBytes(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct Variant {
  const char* name;
  GemvKernel kernel;
  bool pdl;
};
constexpr Variant kVariants[] = {{"warp per row", GemvKernel::kWarpPerRow, false},
                                 {"streaming", GemvKernel::kStreaming, false},
                                 {"streaming, PDL", GemvKernel::kStreaming, true},
                                 {"warp per row, PDL", GemvKernel::kWarpPerRow, true}};

GemvPlan Plan(const Variant& v) {
  auto plan = PlanGemv(v.kernel, v.pdl);
  SQZ_CHECK(plan.ok()) << plan.status().ToString();
  return *plan;
}

TEMPLATE_TEST_CASE("Gemv matches the CPU product for 1..8 rows and is batch invariant", "[cuda]",
                   float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  // Every n with every k up to 16M weights, plus Llama-3-8B's decode shapes (qkv, gate_up, down;
  // the LM head's n with a short k). n >= 16384 takes kWarpPerRow's one-warp-per-feature path.
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int64_t n : {1, 3, 127, 129, 1000, 6144, 28672, 128256}) {
    for (int64_t k : {8, 24, 64, 4096, 14336}) {
      if (n * k <= (int64_t{16} << 20)) shapes.push_back({n, k});
    }
  }
  shapes.insert(shapes.end(), {{6144, 4096}, {28672, 4096}, {4096, 14336}});
  uint32_t seed = 40;
  for (const auto& [n, k] : shapes) {
    constexpr int64_t kRows = kGemvMaxRows;
    const auto a_f = testing::RoundBf16(RandomFloats(kRows * k, seed++));
    const auto w_f = testing::RoundBf16(RandomFloats(n * k, seed++, 0.05f));
    const auto b_f = testing::ToFloat(Make<TestType>(RandomFloats(n, seed++)));
    std::vector<float> product(kRows * n);
    cpu::MatMulTransB(a_f.data(), w_f.data(), nullptr, kRows, n, k, product.data());
    DeviceBuffer<bf16> a(testing::ToBf16(a_f)), w(testing::ToBf16(w_f));
    DeviceBuffer<TestType> b(Make<TestType>(b_f));
    for (int64_t m = 1; m <= kRows; ++m) {
      for (bool with_bias : {false, true}) {
        std::vector<float> want(product.begin(), product.begin() + m * n);
        if (with_bias) {
          for (int64_t i = 0; i < m * n; ++i) want[i] += b_f[i % n];
        }
        INFO("m " << m << " n " << n << " k " << k << " bias " << with_bias);
        std::vector<std::vector<float>> got;
        for (const Variant& v : kVariants) {
          INFO(v.name);
          const GemvPlan plan = Plan(v);
          DeviceBuffer<TestType> out(m * n), out1(n);
          REQUIRE(Gemv<TestType>(plan, a.get(), w.get(), with_bias ? b.get() : nullptr, m, n, k,
                                 out.get(), nullptr)
                      .ok());
          got.push_back(testing::ToFloat(out.Download()));
          CHECK(RelativeL2(got.back(), want) < kTol<TestType>);
          // The last row alone: the same bits.
          REQUIRE(Gemv<TestType>(plan, a.get() + (m - 1) * k, w.get(),
                                 with_bias ? b.get() : nullptr, 1, n, k, out1.get(), nullptr)
                      .ok());
          const auto got1 = testing::ToFloat(out1.Download());
          CHECK(std::equal(got1.begin(), got1.end(), got.back().end() - n));
        }
        // PDL changes when the kernel starts, not what it computes; the streaming kernel sums in
        // the order of the one-warp-per-feature kernel.
        CHECK(SameBits(got[2], got[1]));
        CHECK(SameBits(got[3], got[0]));
        if (n >= 16384) CHECK(SameBits(got[1], got[0]));
      }
    }
  }
}

// A decode layer's chain: RMSNorm (which lets a dependent start early) -> Gemv -> Gemv reading the
// first one's output, on a stream, eagerly and replayed from a captured CUDA graph: with PDL the
// second kernel of each pair must still see the first one's writes.
TEST_CASE("Gemv launched as a programmatic dependent sees the previous kernel's output", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const int64_t d = 4096, n1 = 6144, n2 = 1000;
  cudaStream_t stream = nullptr;
  SQZ_TEST_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  uint32_t seed = 7;
  // {plain, PDL} plans of each kernel.
  const std::pair<Variant, Variant> kernels[] = {{kVariants[0], kVariants[3]},
                                                 {kVariants[1], kVariants[2]}};
  for (const auto& [plain_v, pdl_v] : kernels) {
    for (int64_t m : {1, 3, 8}) {
      INFO(pdl_v.name << ", m " << m);
      const auto norm_w = testing::RoundBf16(RandomFloats(d, seed++));
      const auto w1_f = testing::RoundBf16(RandomFloats(n1 * d, seed++, 0.02f));
      const auto w2_f = testing::RoundBf16(RandomFloats(n2 * n1, seed++, 0.02f));
      DeviceBuffer<bf16> nw(testing::ToBf16(norm_w)), w1(testing::ToBf16(w1_f)),
          w2(testing::ToBf16(w2_f)), xn(m * d), y1(m * n1), y2(m * n2);
      DeviceBuffer<float> x(m * d);
      // Runs the chain on fresh x; returns y2.
      auto run = [&](const GemvPlan& plan, cudaGraphExec_t graph, uint32_t x_seed) {
        x.Upload(RandomFloats(m * d, x_seed));
        y1.Poison();
        y2.Poison();
        SQZ_TEST_CUDA(cudaDeviceSynchronize());  // the uploads are not ordered with `stream`
        if (graph) {
          SQZ_TEST_CUDA(cudaGraphLaunch(graph, stream));
        } else {
          REQUIRE(AddRmsNorm<bf16>(x.get(), nullptr, nw.get(), m, d, 1e-5f, xn.get(), stream).ok());
          REQUIRE(Gemv<bf16>(plan, xn.get(), w1.get(), nullptr, m, n1, d, y1.get(), stream).ok());
          REQUIRE(Gemv<bf16>(plan, y1.get(), w2.get(), nullptr, m, n2, n1, y2.get(), stream).ok());
        }
        SQZ_TEST_CUDA(cudaStreamSynchronize(stream));
        return testing::ToFloat(y2.Download());
      };
      const GemvPlan plain = Plan(plain_v), pdl = Plan(pdl_v);
      // The graph: the same launches captured with PDL.
      SQZ_TEST_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
      REQUIRE(AddRmsNorm<bf16>(x.get(), nullptr, nw.get(), m, d, 1e-5f, xn.get(), stream).ok());
      REQUIRE(Gemv<bf16>(pdl, xn.get(), w1.get(), nullptr, m, n1, d, y1.get(), stream).ok());
      REQUIRE(Gemv<bf16>(pdl, y1.get(), w2.get(), nullptr, m, n2, n1, y2.get(), stream).ok());
      cudaGraph_t graph = nullptr;
      SQZ_TEST_CUDA(cudaStreamEndCapture(stream, &graph));
      cudaGraphExec_t exec = nullptr;
      SQZ_TEST_CUDA(cudaGraphInstantiate(&exec, graph, 0));
      for (uint32_t x_seed = 100; x_seed < 104; ++x_seed) {
        INFO("x seed " << x_seed);
        const auto want = run(plain, nullptr, x_seed);
        CHECK(std::any_of(want.begin(), want.end(), [](float v) { return v != 0.0f; }));
        CHECK(SameBits(run(pdl, nullptr, x_seed), want));
        CHECK(SameBits(run(pdl, exec, x_seed), want));
      }
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
  }
  cudaStreamDestroy(stream);
}

// The fused gate/up + SwiGLU launch against the two launches it replaces (Gemv into [m][2 cols],
// then SwiGlu): the same bits for every row count, both splits of the warp-per-row kernel (2 cols
// below and above 16384), awkward widths, plain and PDL launches, eagerly and from a graph; and
// within bf16 rounding of the CPU's SwiGLU of the exact products.
TEST_CASE("GemvSwiGlu gives the bits of Gemv then SwiGlu", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  cudaStream_t stream = nullptr;
  SQZ_TEST_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  uint32_t seed = 300;
  const std::pair<int64_t, int64_t> shapes[] = {{1, 8},      {3, 24},    {127, 64},
                                                {129, 4096}, {1000, 64}, {8191, 24},
                                                {8192, 64},  {8193, 24}, {14336, 4096}};
  for (const auto& [cols, k] : shapes) {
    constexpr int64_t kRows = kGemvMaxRows;
    const auto a_f = testing::RoundBf16(RandomFloats(kRows * k, seed++));
    const auto w_f = testing::RoundBf16(RandomFloats(2 * cols * k, seed++, 0.05f));
    std::vector<float> product(kRows * 2 * cols);
    cpu::MatMulTransB(a_f.data(), w_f.data(), nullptr, kRows, 2 * cols, k, product.data());
    DeviceBuffer<bf16> a(testing::ToBf16(a_f)), w(testing::ToBf16(w_f));
    for (int64_t m = 1; m <= kRows; ++m) {
      INFO("m " << m << " cols " << cols << " k " << k);
      std::vector<float> want(m * cols);
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t j = 0; j < cols; ++j) {
          const float g = product[r * 2 * cols + j], u = product[r * 2 * cols + cols + j];
          want[r * cols + j] = g / (1.0f + std::exp(-g)) * u;
        }
      }
      for (bool pdl : {false, true}) {
        INFO("pdl " << pdl);
        const GemvPlan plan = Plan({"", GemvKernel::kWarpPerRow, pdl});
        DeviceBuffer<bf16> gate_up(m * 2 * cols), two(m * cols), one(m * cols), graphed(m * cols);
        REQUIRE(Gemv<bf16>(plan, a.get(), w.get(), nullptr, m, 2 * cols, k, gate_up.get(), stream)
                    .ok());
        REQUIRE(SwiGlu<bf16>(gate_up.get(), m, cols, two.get(), stream).ok());
        REQUIRE(GemvSwiGlu(plan, a.get(), w.get(), m, cols, k, one.get(), stream).ok());
        // From a graph, behind a kernel that writes nothing it reads (PDL edge when pdl).
        testing::CaptureAndReplay(
            stream,
            [&] {
              REQUIRE(SwiGlu<bf16>(gate_up.get(), m, cols, two.get(), stream).ok());
              REQUIRE(GemvSwiGlu(plan, a.get(), w.get(), m, cols, k, graphed.get(), stream).ok());
            },
            [&] { graphed.Poison(); });
        const auto got = testing::ToFloat(one.Download());
        CHECK(SameBits(got, testing::ToFloat(two.Download())));
        CHECK(SameBits(testing::ToFloat(graphed.Download()), got));
        CHECK(RelativeL2(got, want) < 2e-2);
      }
    }
  }
  // Refusals: as Gemv's, plus cols < 1.
  DeviceBuffer<bf16> a(64), w(64), out(64);
  const GemvPlan plan = Plan(kVariants[0]);
  Status s = GemvSwiGlu(plan, a.get(), w.get(), 9, 2, 16, out.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("m <= 8") != std::string::npos);
  s = GemvSwiGlu(plan, a.get(), w.get(), 1, 0, 16, out.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("cols") != std::string::npos);
  CHECK(GemvSwiGlu(plan, a.get() + 1, w.get(), 1, 2, 16, out.get(), nullptr).code() ==
        StatusCode::kInvalidArgument);
  cudaStreamDestroy(stream);
}

// The fused QKV projection + RoPE + paged KV write against the launches it replaces (Gemv into
// qkv, then RopeWritePagedKv): the same bits in qkv and in both pools, with and without bias, both
// splits of the warp-per-row kernel (n below and at 16384), head dims 2 to 128, plain and PDL,
// eagerly and from a graph.
TEST_CASE("GemvQkvRope gives the bits of Gemv then RopeWritePagedKv", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  cudaStream_t stream = nullptr;
  SQZ_TEST_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  struct Shape {
    int q, kv, d;
    int64_t k;
    bool bias;
  };
  const Shape shapes[] = {{32, 8, 128, 4096, false}, {28, 4, 128, 512, true},
                          {4, 2, 8, 64, true},       {1, 1, 2, 8, false},
                          {96, 16, 128, 64, true},   {6, 3, 64, 24, false}};
  uint32_t seed = 500;
  for (const Shape& sh : shapes) {
    const int64_t n = static_cast<int64_t>(sh.q + 2 * sh.kv) * sh.d;
    constexpr int64_t kRows = kGemvMaxRows;
    DeviceBuffer<bf16> a(testing::ToBf16(testing::RoundBf16(RandomFloats(kRows * sh.k, seed++))));
    DeviceBuffer<bf16> w(
        testing::ToBf16(testing::RoundBf16(RandomFloats(n * sh.k, seed++, 0.05f))));
    DeviceBuffer<bf16> bias(testing::ToBf16(testing::RoundBf16(RandomFloats(n, seed++))));
    std::vector<float> inv_freq(sh.d / 2);
    for (int i = 0; i < sh.d / 2; ++i) inv_freq[i] = std::pow(500000.0f, -2.0f * i / sh.d);
    DeviceBuffer<float> dinv(inv_freq);
    const int64_t blocks = 4;  // pool blocks: slots drawn from 4 x kPageSize
    std::vector<int32_t> perm(blocks * kPageSize);
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int32_t>(i);
    std::mt19937 gen(seed++);
    std::shuffle(perm.begin(), perm.end(), gen);
    std::vector<int32_t> slots(perm.begin(), perm.begin() + kRows), pos(kRows);
    for (auto& p : pos) p = static_cast<int32_t>(gen() % 131072);
    DeviceBuffer<int32_t> dslots(slots), dpos(pos);
    const int64_t pool = blocks * sh.kv * kPageSize * sh.d;
    for (int64_t m : {1, 3, 8}) {
      for (bool pdl : {false, true}) {
        INFO("q " << sh.q << " kv " << sh.kv << " d " << sh.d << " k " << sh.k << " m " << m
                  << " pdl " << pdl);
        const GemvPlan plan = Plan({"", GemvKernel::kWarpPerRow, pdl});
        const bf16* b = sh.bias ? bias.get() : nullptr;
        DeviceBuffer<bf16> qkv0(m * n), pk0(pool), pv0(pool);
        REQUIRE(Gemv<bf16>(plan, a.get(), w.get(), b, m, n, sh.k, qkv0.get(), stream).ok());
        REQUIRE(RopeWritePagedKv<bf16>(qkv0.get(), n, dpos.get(), dslots.get(), m, sh.q, sh.kv,
                                       sh.d, dinv.get(), pk0.get(), pv0.get(), stream)
                    .ok());
        QkvRopeArgs r;
        r.q_heads = sh.q;
        r.kv_heads = sh.kv;
        r.head_dim = sh.d;
        r.positions = dpos.get();
        r.slots = dslots.get();
        r.inv_freq = dinv.get();
        DeviceBuffer<bf16> qkv(m * n), pk(pool), pv(pool);
        r.pool_k = pk.get();
        r.pool_v = pv.get();
        auto check = [&] {
          SQZ_TEST_CUDA(cudaStreamSynchronize(stream));
          CHECK(SameBits(testing::ToFloat(qkv.Download()), testing::ToFloat(qkv0.Download())));
          // The pools: written slots equal, the rest still poison in both.
          CHECK(SameBytes(testing::ToFloat(pk.Download()), testing::ToFloat(pk0.Download())));
          CHECK(SameBytes(testing::ToFloat(pv.Download()), testing::ToFloat(pv0.Download())));
        };
        REQUIRE(GemvQkvRope(plan, a.get(), w.get(), b, m, sh.k, r, qkv.get(), stream).ok());
        check();
        // From a graph, behind another kernel (a PDL edge when pdl).
        testing::CaptureAndReplay(
            stream,
            [&] {
              REQUIRE(Gemv<bf16>(plan, a.get(), w.get(), b, m, n, sh.k, qkv0.get(), stream).ok());
              REQUIRE(GemvQkvRope(plan, a.get(), w.get(), b, m, sh.k, r, qkv.get(), stream).ok());
            },
            [&] {
              qkv.Poison();
              pk.Poison();
              pv.Poison();
            });
        // qkv0 now holds the plain Gemv output again; the reference is the rotated one.
        REQUIRE(RopeWritePagedKv<bf16>(qkv0.get(), n, dpos.get(), dslots.get(), m, sh.q, sh.kv,
                                       sh.d, dinv.get(), pk0.get(), pv0.get(), stream)
                    .ok());
        INFO("graph");
        check();
      }
    }
  }
  // Refusals.
  DeviceBuffer<bf16> a(64), w(64), out(64);
  DeviceBuffer<int32_t> i1(std::vector<int32_t>{0});
  DeviceBuffer<float> f1(std::vector<float>{1.0f, 1.0f, 1.0f, 1.0f});
  const GemvPlan plan = Plan(kVariants[0]);
  QkvRopeArgs r;
  r.q_heads = 2;
  r.kv_heads = 1;
  r.head_dim = 7;
  r.positions = r.slots = i1.get();
  r.inv_freq = f1.get();
  r.pool_k = r.pool_v = out.get();
  Status s = GemvQkvRope(plan, a.get(), w.get(), nullptr, 1, 16, r, out.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("even head_dim") != std::string::npos);
  r.head_dim = 8;
  r.slots = nullptr;
  s = GemvQkvRope(plan, a.get(), w.get(), nullptr, 1, 16, r, out.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("null positions, slots") != std::string::npos);
  r.slots = i1.get();
  s = GemvQkvRope(plan, a.get(), w.get(), nullptr, 9, 16, r, out.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("m <= 8") != std::string::npos);
  cudaStreamDestroy(stream);
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
  for (const Variant& v : kVariants) {
    INFO(v.name);
    const GemvPlan plan = Plan(v);
    const Status s = Gemv<float>(plan, a.get(), w.get(), nullptr, 9, 2, 16, out.get(), nullptr);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("m <= 8") != std::string::npos);
    CHECK(Gemv<float>(plan, a.get(), w.get(), nullptr, 1, 0, 16, out.get(), nullptr).code() ==
          StatusCode::kInvalidArgument);
  }
  // A streaming plan that PlanGemv did not size.
  const Status s = Gemv<float>(GemvPlan{}, a.get(), w.get(), nullptr, 1, 2, 16, out.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("PlanGemv") != std::string::npos);
}

}  // namespace
}  // namespace sqz::cuda
