#include "kernels/cuda/model_ops.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <type_traits>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;
using testing::Make;
using testing::RandomFloats;
using testing::RelativeL2;
using testing::Seen;

// fp32 math throughout: fp32 outputs agree with the fp32 CPU reference to ~1e-6; bf16 outputs
// carry one rounding (2^-9) on top of bf16-rounded inputs.
template <typename T>
constexpr double kTol = std::is_same_v<T, float> ? 1e-5 : 1e-2;

TEMPLATE_TEST_CASE("EmbedToFloat widens rows exactly and poisons bad ids", "[cuda]", float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 11;
  for (int64_t vocab : {1, 3, 1000}) {
    for (int64_t d : {1, 3, 129}) {
      const int64_t n = 5;
      const auto table_f = RandomFloats(vocab * d, seed++);
      std::vector<int32_t> ids = {0, static_cast<int32_t>(vocab - 1), static_cast<int32_t>(vocab),
                                  -1, static_cast<int32_t>(vocab / 2)};
      DeviceBuffer<TestType> table(Make<TestType>(table_f));
      DeviceBuffer<int32_t> dids(ids);
      DeviceBuffer<float> out(n * d);
      REQUIRE(EmbedToFloat(dids.get(), table.get(), n, vocab, d, out.get(), nullptr).ok());
      const auto got = out.Download();
      const auto want = Seen<TestType>(table_f);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < d; ++j) {
          if (ids[i] < 0 || ids[i] >= vocab) {
            CHECK(std::isnan(got[i * d + j]));
          } else {
            CHECK(got[i * d + j] == want[ids[i] * d + j]);
          }
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("AddRmsNorm and GatherRmsNorm match the CPU RMSNorm", "[cuda]", float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 100;
  // d % 4 == 0 up to 8 vectors a thread takes the vectorised path (64: idle threads; 4100: a
  // partial last round; 8192: the largest), the rest the strided one (8196: past the largest).
  for (int64_t d : {1, 3, 64, 127, 129, 4096, 4100, 8192, 8196}) {
    for (int64_t n : {1, 3, 33}) {
      const auto x0 = RandomFloats(n * d, seed++);
      const auto delta_f = RandomFloats(n * d, seed++, 0.5f);
      const auto w_f = RandomFloats(d, seed++);
      const auto delta_s = Seen<TestType>(delta_f), w_s = Seen<TestType>(w_f);
      // CPU: x1 = x0 + delta, y = rmsnorm(x1) * w.
      std::vector<float> x1(n * d), want(n * d);
      for (int64_t i = 0; i < n * d; ++i) x1[i] = x0[i] + delta_s[i];
      cpu::RmsNorm(x1.data(), w_s.data(), n, d, 1e-5f, want.data());

      DeviceBuffer<float> x(x0);
      DeviceBuffer<TestType> delta(Make<TestType>(delta_f)), w(Make<TestType>(w_f)), y(n * d);
      REQUIRE(
          AddRmsNorm<TestType>(x.get(), delta.get(), w.get(), n, d, 1e-5f, y.get(), nullptr).ok());
      CHECK(x.Download() == x1);  // one fp32 add, exactly as on the CPU
      CHECK(RelativeL2(testing::ToFloat(y.Download()), want) < kTol<TestType>);

      // Without delta: x unchanged.
      DeviceBuffer<TestType> y2(n * d);
      REQUIRE(AddRmsNorm<TestType>(x.get(), nullptr, w.get(), n, d, 1e-5f, y2.get(), nullptr).ok());
      CHECK(x.Download() == x1);
      CHECK(RelativeL2(testing::ToFloat(y2.Download()), want) < kTol<TestType>);

      // Gathered rows, reversed and repeated.
      std::vector<int32_t> rows;
      for (int64_t i = n - 1; i >= 0; --i) rows.push_back(static_cast<int32_t>(i));
      rows.push_back(0);
      DeviceBuffer<int32_t> drows(rows);
      DeviceBuffer<TestType> y3(rows.size() * d);
      REQUIRE(GatherRmsNorm<TestType>(x.get(), drows.get(), w.get(), rows.size(), d, 1e-5f,
                                      y3.get(), nullptr)
                  .ok());
      const auto got3 = testing::ToFloat(y3.Download());
      const auto got2 = testing::ToFloat(y2.Download());
      for (size_t i = 0; i < rows.size(); ++i) {
        for (int64_t j = 0; j < d; ++j) CHECK(got3[i * d + j] == got2[rows[i] * d + j]);
      }
    }
  }
}

// A programmatic launch (PDL) behind the kernel that writes delta (a Gemv): the norm loads only its
// weights before waiting, so it sees that kernel's writes; the same bits as a plain launch, eagerly
// and from a graph, on both paths (d 4096 vectorised, 129 strided).
TEST_CASE("AddRmsNorm launched as a programmatic dependent sees the kernel before's writes",
          "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  cudaStream_t stream = nullptr;
  SQZ_TEST_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int64_t d : {129, 4096}) {
    for (int64_t n : {1, 3}) {
      INFO("d " << d << " n " << n);
      const auto x0 = RandomFloats(n * d, 70 + d);
      DeviceBuffer<bf16> w(Make<bf16>(RandomFloats(d, 71 + d))), delta(n * d), y(n * d);
      DeviceBuffer<float> x(x0);
      // delta comes from a Gemv, which lets its dependents start before it is done.
      DeviceBuffer<bf16> a(Make<bf16>(RandomFloats(n * 8, 72 + d)));
      DeviceBuffer<bf16> wg(Make<bf16>(RandomFloats(d * 8, 73 + d)));
      const auto plan = PlanGemv(GemvKernel::kWarpPerRow, true);
      REQUIRE(plan.ok());
      auto run = [&](bool programmatic) {
        REQUIRE(Gemv<bf16>(*plan, a.get(), wg.get(), nullptr, n, d, 8, delta.get(), stream).ok());
        REQUIRE(AddRmsNorm<bf16>(x.get(), delta.get(), w.get(), n, d, 1e-5f, y.get(), stream,
                                 programmatic)
                    .ok());
      };
      x.Upload(x0);
      SQZ_TEST_CUDA(cudaDeviceSynchronize());
      run(false);
      SQZ_TEST_CUDA(cudaStreamSynchronize(stream));
      const auto want_x = x.Download();
      const auto want_y = testing::ToFloat(y.Download());
      x.Upload(x0);
      y.Poison();
      delta.Poison();
      SQZ_TEST_CUDA(cudaDeviceSynchronize());
      run(true);
      SQZ_TEST_CUDA(cudaStreamSynchronize(stream));
      CHECK(x.Download() == want_x);
      CHECK(testing::ToFloat(y.Download()) == want_y);
      // From a graph.
      testing::CaptureAndReplay(
          stream, [&] { run(true); },
          [&] {
            x.Upload(x0);
            y.Poison();
            delta.Poison();
          });
      INFO("graph");
      CHECK(x.Download() == want_x);
      CHECK(testing::ToFloat(y.Download()) == want_y);
    }
  }
  cudaStreamDestroy(stream);
}

TEMPLATE_TEST_CASE("AddToFloat adds in fp32", "[cuda]", float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  for (int64_t n : {1, 3, 1000, 100003}) {
    const auto x0 = RandomFloats(n, 7 + n), d_f = RandomFloats(n, 8 + n);
    const auto d_s = Seen<TestType>(d_f);
    DeviceBuffer<float> x(x0);
    DeviceBuffer<TestType> delta(Make<TestType>(d_f));
    REQUIRE(AddToFloat<TestType>(x.get(), delta.get(), n, nullptr).ok());
    std::vector<float> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = x0[i] + d_s[i];
    CHECK(x.Download() == want);
  }
}

// A random paged layout: `lens` sequences with block tables drawn from a shuffled pool.
struct PagedLayout {
  int64_t blocks = 0;
  std::vector<std::vector<int32_t>> tables;
};
PagedLayout MakeLayout(const std::vector<int64_t>& lens, uint32_t seed) {
  PagedLayout p;
  for (int64_t len : lens) p.blocks += (len + kPageSize - 1) / kPageSize;
  p.blocks += 3;  // unused blocks in between
  std::vector<int32_t> ids(p.blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  size_t next = 0;
  for (int64_t len : lens) {
    std::vector<int32_t> t;
    for (int64_t b = 0; b < (len + kPageSize - 1) / kPageSize; ++b) t.push_back(ids[next++]);
    p.tables.push_back(t);
  }
  return p;
}

TEMPLATE_TEST_CASE("WritePagedKv and GatherPagedKv place and return every element", "[cuda]", float,
                   bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 300;
  for (int kvh : {1, 3, 8}) {
    for (int d : {8, 64, 130}) {
      for (int64_t n : {1, 16, 37, 129}) {
        const int64_t width = kvh * d, stride = 3 * width + 5, k_off = width + 1,
                      v_off = 2 * width + 3;
        PagedLayout lay = MakeLayout({n}, seed++);
        const auto& table = lay.tables[0];
        std::vector<int32_t> slots(n);
        for (int64_t t = 0; t < n; ++t) {
          slots[t] = table[t / kPageSize] * kPageSize + static_cast<int32_t>(t % kPageSize);
        }
        const auto src_f = RandomFloats(n * stride, seed++);
        DeviceBuffer<TestType> src(Make<TestType>(src_f));
        DeviceBuffer<int32_t> dslots(slots), dtable(table);
        const int64_t pool_elems = lay.blocks * kvh * kPageSize * d;
        DeviceBuffer<TestType> pk(pool_elems), pv(pool_elems);
        REQUIRE(WritePagedKv<TestType>(src.get(), stride, k_off, v_off, dslots.get(), n, kvh, d,
                                       pk.get(), pv.get(), nullptr)
                    .ok());
        const auto src_s = Seen<TestType>(src_f);
        const auto pool_k = testing::ToFloat(pk.Download());
        // The documented layout: block b, head h, slot i at ((b * kvh + h) * 16 + i) * d.
        const int64_t t = n - 1, h = kvh - 1, e = d / 2;
        const int64_t b = table[t / kPageSize], i = t % kPageSize;
        CHECK(pool_k[((b * kvh + h) * kPageSize + i) * d + e] ==
              src_s[t * stride + k_off + h * d + e]);

        DeviceBuffer<TestType> ko(n * width), vo(n * width);
        REQUIRE(GatherPagedKv<TestType>(pk.get(), pv.get(), dtable.get(), n, kvh, d, ko.get(),
                                        vo.get(), nullptr)
                    .ok());
        const auto gk = testing::ToFloat(ko.Download()), gv = testing::ToFloat(vo.Download());
        bool same = true;
        for (int64_t r = 0; r < n; ++r) {
          for (int64_t j = 0; j < width; ++j) {
            same = same && gk[r * width + j] == src_s[r * stride + k_off + j] &&
                   gv[r * width + j] == src_s[r * stride + v_off + j];
          }
        }
        CHECK(same);
      }
    }
  }
  DeviceBuffer<TestType> dummy(16);
  DeviceBuffer<int32_t> s1(std::vector<int32_t>{0});
  const Status s = WritePagedKv<TestType>(dummy.get(), 10, 4, 0, s1.get(), 1, 1, 8, dummy.get(),
                                          dummy.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("exceed the row of 10") != std::string::npos);
}

// The fused launch against the two it replaces (ApplyRope over the q and k heads, then
// WritePagedKv of the rotated keys and the values): the same bits in qkv and in both pools, over
// head counts with and without query heads, odd token counts and head dims from 2 to 128 (qkv
// written on the stream by FillUniform just before); eager and replayed from a captured graph.
TEMPLATE_TEST_CASE("RopeWritePagedKv equals ApplyRope then WritePagedKv", "[cuda]", float, bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  cpu::RopeParams llama3;
  llama3.theta = 500000.0f;
  llama3.llama3_factor = 8.0f;
  cudaStream_t stream = nullptr;
  SQZ_TEST_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  uint32_t seed = 900;
  for (int d : {2, 8, 64, 128}) {
    for (const auto& [qh, kvh] : {std::pair{0, 1}, {1, 1}, {4, 2}, {32, 8}, {6, 3}}) {
      for (int64_t n : {1, 3, 129}) {
        INFO("d " << d << " q heads " << qh << " kv heads " << kvh << " n " << n);
        const int64_t stride = static_cast<int64_t>(qh + 2 * kvh) * d + 5;
        PagedLayout lay = MakeLayout({n}, seed++);
        std::vector<int32_t> slots(n), pos(n);
        std::mt19937 gen(seed++);
        for (int64_t t = 0; t < n; ++t) {
          slots[t] = lay.tables[0][t / kPageSize] * kPageSize + static_cast<int32_t>(t % kPageSize);
          pos[t] = static_cast<int32_t>(gen() % 131072);
        }
        std::vector<float> inv_freq(d / 2);
        cpu::RopeInvFreq(llama3, d, inv_freq.data());
        DeviceBuffer<int32_t> dslots(slots), dpos(pos);
        DeviceBuffer<float> dinv(inv_freq);
        const int64_t pool_elems = lay.blocks * kvh * kPageSize * d;
        const uint64_t fill_seed = seed++;
        auto fill = [&](TestType* qkv) {
          return FillUniform<TestType>(qkv, n * stride, 2.0f, fill_seed, stream);
        };
        // Reference: the two launches.
        DeviceBuffer<TestType> qkv0(n * stride), pk0(pool_elems), pv0(pool_elems);
        REQUIRE(fill(qkv0.get()).ok());
        REQUIRE(
            ApplyRope<TestType>(qkv0.get(), dpos.get(), n, qh + kvh, d, stride, dinv.get(), stream)
                .ok());
        REQUIRE(WritePagedKv<TestType>(qkv0.get(), stride, int64_t{qh} * d, int64_t{qh + kvh} * d,
                                       dslots.get(), n, kvh, d, pk0.get(), pv0.get(), stream)
                    .ok());
        SQZ_TEST_CUDA(cudaStreamSynchronize(stream));
        const auto want_qkv = testing::ToFloat(qkv0.Download());
        const auto want_k = testing::ToFloat(pk0.Download());
        const auto want_v = testing::ToFloat(pv0.Download());
        auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
          return a.size() == b.size() &&
                 std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;  // NaN poison too
        };
        DeviceBuffer<TestType> qkv(n * stride), pk(pool_elems), pv(pool_elems);
        auto launch = [&] {
          REQUIRE(fill(qkv.get()).ok());
          REQUIRE(RopeWritePagedKv<TestType>(qkv.get(), stride, dpos.get(), dslots.get(), n, qh,
                                             kvh, d, dinv.get(), pk.get(), pv.get(), stream)
                      .ok());
        };
        auto check = [&] {
          SQZ_TEST_CUDA(cudaStreamSynchronize(stream));
          CHECK(same(testing::ToFloat(qkv.Download()), want_qkv));
          CHECK(same(testing::ToFloat(pk.Download()), want_k));
          CHECK(same(testing::ToFloat(pv.Download()), want_v));
          qkv.Poison();
          pk.Poison();
          pv.Poison();
        };
        launch();
        check();
        testing::CaptureAndReplay(stream, launch);
        INFO("graph");
        check();
      }
    }
  }
  cudaStreamDestroy(stream);
  // Bad arguments name the op and what to fix.
  DeviceBuffer<TestType> dummy(64);
  DeviceBuffer<int32_t> i1(std::vector<int32_t>{0});
  DeviceBuffer<float> f1(4);
  Status s = RopeWritePagedKv<TestType>(dummy.get(), 64, i1.get(), i1.get(), 1, 2, 1, 7, f1.get(),
                                        dummy.get(), dummy.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("even head_dim") != std::string::npos);
  s = RopeWritePagedKv<TestType>(dummy.get(), 31, i1.get(), i1.get(), 1, 2, 1, 8, f1.get(),
                                 dummy.get(), dummy.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("row_stride 31 < (q_heads + 2 * kv_heads) * head_dim = 32") !=
        std::string::npos);
  s = RopeWritePagedKv<TestType>(dummy.get(), 32, i1.get(), nullptr, 1, 2, 1, 8, f1.get(),
                                 dummy.get(), dummy.get(), nullptr);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message().find("RopeWritePagedKv: null pointer") != std::string::npos);
}

TEMPLATE_TEST_CASE("PagedAttentionSimple matches causal CPU attention, row by row", "[cuda]", float,
                   bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 500;
  struct Shape {
    int q_heads, kv_heads, d;
  };
  for (Shape sh : {Shape{1, 1, 8}, Shape{8, 4, 8}, Shape{4, 1, 64}, Shape{6, 3, 96},
                   Shape{2, 2, 256}, Shape{32, 8, 128}}) {
    const std::vector<int64_t> lens = {1, 3, 17, 129};
    PagedLayout lay = MakeLayout(lens, seed++);
    const int64_t kv_dim = sh.kv_heads * sh.d, q_dim = sh.q_heads * sh.d;
    const int64_t pool_elems = lay.blocks * kv_dim * kPageSize;
    const auto pk_f = RandomFloats(pool_elems, seed++), pv_f = RandomFloats(pool_elems, seed++);
    const auto pk_s = Seen<TestType>(pk_f), pv_s = Seen<TestType>(pv_f);
    // Rows: the last 2 tokens of each sequence (1 for the first), as a chunk would be.
    std::vector<int32_t> row_keys, row_table, block_ids;
    std::vector<int64_t> row_seq;
    for (size_t s = 0; s < lens.size(); ++s) {
      const int32_t table = static_cast<int32_t>(block_ids.size());
      block_ids.insert(block_ids.end(), lay.tables[s].begin(), lay.tables[s].end());
      for (int64_t k = std::max<int64_t>(1, lens[s] - 1); k <= lens[s]; ++k) {
        row_keys.push_back(static_cast<int32_t>(k));
        row_table.push_back(table);
        row_seq.push_back(static_cast<int64_t>(s));
      }
    }
    const int64_t rows = static_cast<int64_t>(row_keys.size());
    const int64_t q_stride = q_dim + 3;
    const auto q_f = RandomFloats(rows * q_stride, seed++);
    const auto q_s = Seen<TestType>(q_f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(sh.d));
    // CPU reference over each row's keys in order.
    std::vector<float> want(rows * q_dim);
    for (int64_t r = 0; r < rows; ++r) {
      const auto& table = lay.tables[row_seq[r]];
      for (int h = 0; h < sh.q_heads; ++h) {
        const int kvh = h / (sh.q_heads / sh.kv_heads);
        std::vector<float> k(row_keys[r] * sh.d), v(row_keys[r] * sh.d);
        for (int64_t j = 0; j < row_keys[r]; ++j) {
          const int64_t base =
              ((table[j / kPageSize] * sh.kv_heads + kvh) * kPageSize + j % kPageSize) * sh.d;
          std::copy_n(pk_s.begin() + base, sh.d, k.begin() + j * sh.d);
          std::copy_n(pv_s.begin() + base, sh.d, v.begin() + j * sh.d);
        }
        std::vector<float> o(sh.d, 0.0f);
        cpu::AttentionPartial st;
        cpu::AttendAccumulate(q_s.data() + r * q_stride + h * sh.d, k.data(), sh.d, v.data(), sh.d,
                              row_keys[r], sh.d, scale, o.data(), &st);
        std::copy(o.begin(), o.end(), want.begin() + r * q_dim + h * sh.d);
      }
    }
    DeviceBuffer<TestType> q(Make<TestType>(q_f)), pk(Make<TestType>(pk_f)),
        pv(Make<TestType>(pv_f));
    DeviceBuffer<int32_t> dkeys(row_keys), dtable(row_table), dblocks(block_ids);
    DeviceBuffer<TestType> out(rows * q_dim);
    PagedAttentionParams<TestType> p;
    p.q = q.get();
    p.q_stride = q_stride;
    p.row_keys = dkeys.get();
    p.row_table = dtable.get();
    p.block_ids = dblocks.get();
    p.pool_k = pk.get();
    p.pool_v = pv.get();
    p.rows = rows;
    p.q_heads = sh.q_heads;
    p.kv_heads = sh.kv_heads;
    p.head_dim = sh.d;
    p.scale = scale;
    REQUIRE(PagedAttentionSimple<TestType>(p, out.get(), q_dim, nullptr).ok());
    const auto got = testing::ToFloat(out.Download());
    INFO("q_heads " << sh.q_heads << " kv_heads " << sh.kv_heads << " d " << sh.d);
    CHECK(RelativeL2(got, want) < kTol<TestType>);
    // Batch invariance: the last row alone gives the same bits.
    PagedAttentionParams<TestType> last = p;
    last.q = q.get() + (rows - 1) * q_stride;
    last.row_keys = dkeys.get() + rows - 1;
    last.row_table = dtable.get() + rows - 1;
    last.rows = 1;
    DeviceBuffer<TestType> out1(q_dim);
    REQUIRE(PagedAttentionSimple<TestType>(last, out1.get(), q_dim, nullptr).ok());
    const auto got1 = testing::ToFloat(out1.Download());
    CHECK(std::equal(got1.begin(), got1.end(), got.end() - q_dim));
  }
  PagedAttentionParams<TestType> bad;
  bad.rows = 1;
  bad.q_heads = 4;
  bad.kv_heads = 4;
  bad.head_dim = 258;
  bad.scale = 1.0f;
  CHECK(PagedAttentionSimple<TestType>(bad, nullptr, 0, nullptr).code() ==
        StatusCode::kInvalidArgument);
  bad.head_dim = 8;
  bad.kv_heads = 3;
  CHECK(PagedAttentionSimple<TestType>(bad, nullptr, 0, nullptr).message().find("divide") !=
        std::string::npos);
}

TEST_CASE("MatMulTransBF32 matches the CPU product and is batch invariant", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  uint32_t seed = 900;
  for (int64_t m : {1, 3, 127, 129}) {
    for (int64_t n : {1, 65, 1000}) {
      for (int64_t k : {1, 17, 300}) {
        const auto a_f = RandomFloats(m * k, seed++), w_f = RandomFloats(n * k, seed++),
                   b_f = RandomFloats(n, seed++);
        std::vector<float> want(m * n);
        cpu::MatMulTransB(a_f.data(), w_f.data(), b_f.data(), m, n, k, want.data());
        DeviceBuffer<float> a(a_f), w(w_f), b(b_f), out(m * n), out1(n);
        REQUIRE(MatMulTransBF32(a.get(), w.get(), b.get(), m, n, k, out.get(), nullptr).ok());
        const auto got = out.Download();
        INFO("m " << m << " n " << n << " k " << k);
        CHECK(RelativeL2(got, want) < 1e-5);
        // The last row alone: the same bits.
        REQUIRE(
            MatMulTransBF32(a.get() + (m - 1) * k, w.get(), b.get(), 1, n, k, out1.get(), nullptr)
                .ok());
        const auto got1 = out1.Download();
        CHECK(std::equal(got1.begin(), got1.end(), got.end() - n));
      }
    }
  }
  CHECK(MatMulTransBF32(nullptr, nullptr, nullptr, 1, 0, 1, nullptr, nullptr).code() ==
        StatusCode::kInvalidArgument);
  CHECK(MatMulTransBF32(nullptr, nullptr, nullptr, 0, 3, 4, nullptr, nullptr).ok());
}

TEMPLATE_TEST_CASE("FillUniform is reproducible and uniform; FillConstant fills", "[cuda]", float,
                   bf16) {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const int64_t n = 100003;
  DeviceBuffer<TestType> a(n), b(n), c(n);
  REQUIRE(FillUniform<TestType>(a.get(), n, 0.5f, 42, nullptr).ok());
  REQUIRE(FillUniform<TestType>(b.get(), n, 0.5f, 42, nullptr).ok());
  REQUIRE(FillUniform<TestType>(c.get(), n, 0.5f, 43, nullptr).ok());
  const auto ga = testing::ToFloat(a.Download()), gb = testing::ToFloat(b.Download()),
             gc = testing::ToFloat(c.Download());
  CHECK(ga == gb);
  CHECK(ga != gc);
  double sum = 0, sq = 0;
  for (float x : ga) {
    REQUIRE(std::abs(x) <= 0.5f);
    sum += x;
    sq += static_cast<double>(x) * x;
  }
  CHECK(std::abs(sum / n) < 0.01);
  CHECK(std::abs(sq / n - 0.25 / 3) < 0.005);
  REQUIRE(FillConstant<TestType>(a.get(), 5, 1.0f, nullptr).ok());
  const auto g1 = testing::ToFloat(a.Download());
  CHECK(std::all_of(g1.begin(), g1.begin() + 5, [](float x) { return x == 1.0f; }));
  CHECK(g1[5] == ga[5]);  // nothing beyond n written
}

}  // namespace
}  // namespace sqz::cuda
