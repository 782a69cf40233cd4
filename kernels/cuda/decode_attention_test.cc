#include "kernels/cuda/decode_attention.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/test_util.h"

namespace sqz::cuda {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;
using testing::RandomFloats;
using testing::RelativeL2;

// Tolerance (relative L2 per request against the CPU oracle on the same bf16 inputs): the
// tensor-core kernels (head_dim 32, 64, 96, 128) round probabilities to bf16 before P V (~2^-9),
// the CUDA-core kernel (8, 16, 48) is fp32 throughout (~1e-6); a bf16 output adds one rounding.
template <typename T>
double Tol(int d) {
  if (std::is_same_v<T, bf16>) return 1e-2;
  return d % 32 == 0 ? 1e-2 : 1e-4;
}

int NumSms() {
  int sms = 0;
  SQZ_TEST_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  return sms;
}

// A batch of requests with host copies of everything the kernel reads.
struct Batch {
  int hq, hkv, d;
  std::vector<int32_t> ctx_len, own_len;
  std::vector<std::vector<float>> ctx_k, ctx_v;  // per request [hkv][ctx_len][d], bf16 values
  std::vector<float> q;                          // [batch][hq][d]
  std::vector<float> pool_k, pool_v;             // [blocks][hkv][16][d]
  std::vector<int32_t> indptr, block_ids;
  int64_t max_len = 0;
};

Batch MakeBatch(const std::vector<int32_t>& ctx_len, const std::vector<int32_t>& own_len, int hq,
                int hkv, int d, uint32_t seed) {
  Batch b;
  b.hq = hq;
  b.hkv = hkv;
  b.d = d;
  b.ctx_len = ctx_len;
  b.own_len = own_len;
  const size_t n = ctx_len.size();
  b.q = testing::RoundBf16(RandomFloats(n * hq * d, seed++, 1.0f));
  b.indptr.push_back(0);
  int32_t blocks_needed = 0;
  for (size_t r = 0; r < n; ++r) {
    b.ctx_k.push_back(testing::RoundBf16(RandomFloats(size_t(hkv) * ctx_len[r] * d, seed++)));
    b.ctx_v.push_back(testing::RoundBf16(RandomFloats(size_t(hkv) * ctx_len[r] * d, seed++)));
    const int32_t blocks = (own_len[r] + kPageSize - 1) / kPageSize + (r % 2);  // spare block
    blocks_needed += blocks;
    b.indptr.push_back(blocks_needed);
    b.max_len = std::max<int64_t>(b.max_len, ctx_len[r] + own_len[r]);
  }
  // Blocks handed out in a shuffled order from a pool with spare blocks.
  const int32_t pool_blocks = blocks_needed + 5;
  std::vector<int32_t> perm(pool_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(seed++));
  b.block_ids.assign(perm.begin(), perm.begin() + blocks_needed);
  b.pool_k = testing::RoundBf16(RandomFloats(size_t(pool_blocks) * hkv * kPageSize * d, seed++));
  b.pool_v = testing::RoundBf16(RandomFloats(size_t(pool_blocks) * hkv * kPageSize * d, seed++));
  return b;
}

// The oracle: context keys then own tokens, through cpu::AttendAccumulate.
void Reference(const Batch& b, std::vector<float>* o, std::vector<cpu::AttentionPartial>* st) {
  const size_t n = b.ctx_len.size();
  const int g = b.hq / b.hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(b.d));
  o->assign(n * b.hq * b.d, 0.0f);
  st->assign(n * b.hq, {});
  std::vector<float> own_k, own_v;
  for (size_t r = 0; r < n; ++r) {
    for (int h = 0; h < b.hq; ++h) {
      const int kvh = h / g;
      const float* q = b.q.data() + (r * b.hq + h) * b.d;
      float* out = o->data() + (r * b.hq + h) * b.d;
      cpu::AttentionPartial* s = &(*st)[r * b.hq + h];
      const size_t off = size_t(kvh) * b.ctx_len[r] * b.d;
      cpu::AttendAccumulate(q, b.ctx_k[r].data() + off, b.d, b.ctx_v[r].data() + off, b.d,
                            b.ctx_len[r], b.d, scale, out, s);
      own_k.assign(size_t(b.own_len[r]) * b.d, 0.0f);
      own_v.assign(own_k.size(), 0.0f);
      for (int32_t u = 0; u < b.own_len[r]; ++u) {
        const int32_t blk = b.block_ids[b.indptr[r] + u / kPageSize];
        const size_t src = ((size_t(blk) * b.hkv + kvh) * kPageSize + u % kPageSize) * b.d;
        std::copy_n(b.pool_k.begin() + src, b.d, own_k.begin() + size_t(u) * b.d);
        std::copy_n(b.pool_v.begin() + src, b.d, own_v.begin() + size_t(u) * b.d);
      }
      cpu::AttendAccumulate(q, own_k.data(), b.d, own_v.data(), b.d, b.own_len[r], b.d, scale, out,
                            s);
    }
  }
}

// Device copies of a Batch, and a runner.
struct DeviceBatch {
  explicit DeviceBatch(const Batch& b)
      : q(testing::ToBf16(b.q)),
        pool_k(testing::ToBf16(b.pool_k)),
        pool_v(testing::ToBf16(b.pool_v)),
        ctx_len(b.ctx_len),
        own_len(b.own_len),
        indptr(b.indptr),
        block_ids(b.block_ids.empty() ? std::vector<int32_t>{0} : b.block_ids),
        ctx_k_ptrs(b.ctx_len.size()),
        ctx_v_ptrs(b.ctx_len.size()) {
    std::vector<const bf16*> kp, vp;
    for (size_t r = 0; r < b.ctx_len.size(); ++r) {
      ctx_k.push_back(std::make_unique<DeviceBuffer<bf16>>(testing::ToBf16(b.ctx_k[r])));
      ctx_v.push_back(std::make_unique<DeviceBuffer<bf16>>(testing::ToBf16(b.ctx_v[r])));
      kp.push_back(ctx_k.back()->get());
      vp.push_back(ctx_v.back()->get());
    }
    ctx_k_ptrs.Upload(kp);
    ctx_v_ptrs.Upload(vp);
  }
  DecodeAttentionParams Params(const Batch& b) const {
    DecodeAttentionParams p;
    p.batch = static_cast<int>(b.ctx_len.size());
    p.n_q_heads = b.hq;
    p.n_kv_heads = b.hkv;
    p.head_dim = b.d;
    p.scale = 1.0f / std::sqrt(static_cast<float>(b.d));
    p.q = q.get();
    p.q_stride = b.hq * b.d;
    p.ctx_len = ctx_len.get();
    p.ctx_k = ctx_k_ptrs.get();
    p.ctx_v = ctx_v_ptrs.get();
    p.own_len = own_len.get();
    p.block_indptr = indptr.get();
    p.block_ids = block_ids.get();
    p.pool_k = pool_k.get();
    p.pool_v = pool_v.get();
    p.max_kv_len = b.max_len;
    return p;
  }
  DeviceBuffer<bf16> q, pool_k, pool_v;
  DeviceBuffer<int32_t> ctx_len, own_len, indptr, block_ids;
  std::vector<std::unique_ptr<DeviceBuffer<bf16>>> ctx_k, ctx_v;
  DeviceBuffer<const bf16*> ctx_k_ptrs, ctx_v_ptrs;
};

// A workspace as the contract wants it: allocated (poisoned by DeviceBuffer), then zeroed once.
void ZeroOnce(DeviceBuffer<char>* ws) {
  if (ws->size() > 0) SQZ_TEST_CUDA(cudaMemset(ws->get(), 0, ws->size()));
}

// fused: the merge in the chunk kernel's last block (default) or the separate merge kernel. A
// fused run is repeated on the same workspace (as a replayed graph would) and must give the same
// bits: the last blocks reset the counters.
template <typename TOut>
void RunAndCheck(const Batch& b, int64_t force_chunk, bool fused = true) {
  INFO("hq=" << b.hq << " hkv=" << b.hkv << " d=" << b.d << " force_chunk=" << force_chunk
             << " out=" << (std::is_same_v<TOut, float> ? "f32" : "bf16") << " fused=" << fused);
  DeviceBatch db(b);
  const DecodeAttentionParams p = db.Params(b);
  DecodePlanOptions options;
  options.force_chunk_len = force_chunk;
  options.fused_merge = fused;
  const DecodePlan plan = PlanDecodeAttention(p, NumSms(), options);
  REQUIRE(plan.fused_merge == (fused && plan.num_chunks > 1));
  DeviceBuffer<char> ws(plan.workspace_bytes);
  ZeroOnce(&ws);
  const size_t n = b.ctx_len.size();
  DeviceBuffer<TOut> out(n * b.hq * b.d);
  DeviceBuffer<cpu::AttentionPartial> stats(n * b.hq);
  const Status s =
      DecodeAttention<TOut>(p, plan, out.get(), stats.get(), ws.get(), ws.size(), nullptr);
  INFO(s.ToString());
  REQUIRE(s.ok());
  if (plan.fused_merge) {
    const auto first = out.Download();
    out.Poison();
    REQUIRE(
        DecodeAttention<TOut>(p, plan, out.get(), stats.get(), ws.get(), ws.size(), nullptr).ok());
    const auto again = out.Download();
    REQUIRE(std::memcmp(first.data(), again.data(), first.size() * sizeof(TOut)) == 0);
    std::vector<char> ws_host(ws.size());
    SQZ_TEST_CUDA(cudaMemcpy(ws_host.data(), ws.get(), DecodeCounterBytes(p), cudaMemcpyDefault));
    for (size_t i = 0; i < DecodeCounterBytes(p); ++i) REQUIRE(ws_host[i] == 0);
  }
  if (b.d % 32 == 0) {
    // The tensor-core kernel with a two-tile ring (DecodePlan::stages 2) over the same chunks:
    // the same bits.
    DecodePlanOptions two = options;
    two.force_chunk_len = plan.chunk_len;
    two.mma_stages = 2;
    const DecodePlan plan2 = PlanDecodeAttention(p, NumSms(), two);
    REQUIRE(plan2.stages == 2);
    REQUIRE(plan2.num_chunks == plan.num_chunks);
    DeviceBuffer<TOut> out2(n * b.hq * b.d);
    REQUIRE(
        DecodeAttention<TOut>(p, plan2, out2.get(), nullptr, ws.get(), ws.size(), nullptr).ok());
    const auto a = out.Download(), c = out2.Download();
    REQUIRE(std::memcmp(a.data(), c.data(), a.size() * sizeof(TOut)) == 0);
  }
  std::vector<float> want;
  std::vector<cpu::AttentionPartial> want_st;
  Reference(b, &want, &want_st);
  const auto got = testing::ToFloat(out.Download());
  const auto got_st = stats.Download();
  const size_t row = size_t(b.hq) * b.d;
  for (size_t r = 0; r < n; ++r) {
    INFO("request " << r << " ctx_len=" << b.ctx_len[r] << " own_len=" << b.own_len[r]
                    << " chunks=" << plan.num_chunks);
    std::vector<float> g(got.begin() + r * row, got.begin() + (r + 1) * row);
    std::vector<float> w(want.begin() + r * row, want.begin() + (r + 1) * row);
    if (b.ctx_len[r] + b.own_len[r] == 0) {
      for (float x : g) REQUIRE(x == 0.0f);
    } else {
      REQUIRE(RelativeL2(g, w) < Tol<TOut>(b.d));
    }
    for (int h = 0; h < b.hq; ++h) {
      const auto& a = got_st[r * b.hq + h];
      const auto& e = want_st[r * b.hq + h];
      if (e.l == 0.0f) {
        REQUIRE(a.l == 0.0f);
        REQUIRE(a.m == -INFINITY);
      } else {
        REQUIRE(std::fabs(a.m - e.m) <= 1e-4 + 1e-5 * std::fabs(e.m));
        REQUIRE(std::fabs(a.l - e.l) <= 1e-4 * e.l);
      }
    }
  }
}

TEST_CASE("DecodeAttention matches the CPU oracle over contexts, pages, GQA and head dims",
          "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const std::vector<int32_t> ctx = {0, 1, 3, 127, 129, 1000, 0, 2500, 5000};
  const std::vector<int32_t> own = {1, 0, 15, 16, 17, 100, 0, 1, 33};
  uint32_t seed = 1;
  for (int d : {8, 16, 32, 48, 64, 96, 128}) {
    for (auto [hq, hkv] : {std::pair{32, 8}, std::pair{9, 3}, std::pair{8, 8}, std::pair{8, 1}}) {
      const Batch b = MakeBatch(ctx, own, hq, hkv, d, seed += 20);
      for (bool fused : {true, false}) {
        RunAndCheck<float>(b, 0, fused);   // the planner's split
        RunAndCheck<float>(b, 64, fused);  // many chunks (79 > one merge piece of 64)
        if (hq == 32) RunAndCheck<bf16>(b, 192, fused);
      }
    }
  }
}

TEST_CASE("DecodeAttention of a request is the same alone and in a batch", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const Batch batch = MakeBatch({700, 0, 3000}, {5, 40, 17}, 32, 8, 128, 77);
  const Batch alone = MakeBatch({3000}, {17}, 32, 8, 128, 77);
  // Same data for request 2 of the batch and the lone request.
  Batch solo = alone;
  solo.q.assign(batch.q.begin() + 2 * 32 * 128, batch.q.end());
  solo.ctx_k = {batch.ctx_k[2]};
  solo.ctx_v = {batch.ctx_v[2]};
  solo.pool_k = batch.pool_k;
  solo.pool_v = batch.pool_v;
  solo.indptr = {0, batch.indptr[3] - batch.indptr[2]};
  solo.block_ids.assign(batch.block_ids.begin() + batch.indptr[2],
                        batch.block_ids.begin() + batch.indptr[3]);
  std::vector<float> results[2];
  int i = 0;
  for (const Batch* b : {&batch, static_cast<const Batch*>(&solo)}) {
    DeviceBatch db(*b);
    DecodeAttentionParams p = db.Params(*b);
    p.max_kv_len = 4096;  // the same bound, so the same split
    const DecodePlan plan = PlanDecodeAttention(p, 132, 512);
    DeviceBuffer<char> ws(plan.workspace_bytes);
    ZeroOnce(&ws);
    DeviceBuffer<float> out(b->ctx_len.size() * 32 * 128);
    REQUIRE(DecodeAttention<float>(p, plan, out.get(), nullptr, ws.get(), ws.size(), nullptr).ok());
    const auto all = out.Download();
    results[i++].assign(all.end() - 32 * 128, all.end());
  }
  REQUIRE(results[0] == results[1]);
}

TEST_CASE("DecodeAttention's fused merge over awkward splits matches the CPU oracle", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  // One long request beside short ones and own paged tokens: chunk counts that do not divide the
  // keys, chunks past the end of the short requests (empty partials), exactly one chunk, and more
  // chunks than one merge piece (64).
  const std::vector<int32_t> ctx = {4099, 0, 65, 1};
  const std::vector<int32_t> own = {37, 16, 0, 130};
  uint32_t seed = 300;
  for (int d : {64, 128, 48, 16}) {
    for (auto [hq, hkv] : {std::pair{32, 8}, std::pair{7, 7}, std::pair{16, 2}}) {
      const Batch b = MakeBatch(ctx, own, hq, hkv, d, seed += 20);
      for (int64_t chunk :
           {int64_t{64}, int64_t{128}, int64_t{192}, int64_t{1088}, int64_t{8192}}) {
        RunAndCheck<float>(b, chunk, true);
      }
      RunAndCheck<bf16>(b, 320, true);
    }
  }
}

TEST_CASE("DecodeAttention's fused merge leaves the workspace reusable by any plan", "[cuda]") {
  SQZ_REQUIRE_CUDA_OR_SKIP();
  const Batch b = MakeBatch({3000, 700, 0}, {5, 40, 17}, 32, 8, 128, 500);
  DeviceBatch db(b);
  const DecodeAttentionParams p = db.Params(b);
  std::vector<float> want;
  std::vector<cpu::AttentionPartial> want_st;
  Reference(b, &want, &want_st);
  // One workspace, sized for the most chunks, zeroed once; plans alternate between fused and
  // unfused and between chunk counts, as layers and steps of a server would.
  DeviceBuffer<char> ws(PlanDecodeAttention(p, NumSms(), 64).workspace_bytes);
  ZeroOnce(&ws);
  DeviceBuffer<float> out(b.ctx_len.size() * b.hq * b.d);
  int step = 0;
  for (int64_t chunk : {int64_t{64}, int64_t{0}, int64_t{192}, int64_t{64}, int64_t{4096}}) {
    for (bool fused : {true, false, true}) {
      INFO("step " << step++ << " chunk " << chunk << " fused " << fused);
      DecodePlanOptions options;
      options.force_chunk_len = chunk;
      options.fused_merge = fused;
      const DecodePlan plan = PlanDecodeAttention(p, NumSms(), options);
      REQUIRE(plan.workspace_bytes <= ws.size());
      out.Poison();
      REQUIRE(
          DecodeAttention<float>(p, plan, out.get(), nullptr, ws.get(), ws.size(), nullptr).ok());
      const auto got = out.Download();
      const size_t row = size_t(b.hq) * b.d;
      for (size_t r = 0; r < b.ctx_len.size(); ++r) {
        std::vector<float> g(got.begin() + r * row, got.begin() + (r + 1) * row);
        std::vector<float> w(want.begin() + r * row, want.begin() + (r + 1) * row);
        for (float x : g) REQUIRE(std::isfinite(x));
        REQUIRE(RelativeL2(g, w) < Tol<float>(b.d));
      }
    }
  }
}

TEST_CASE("PlanDecodeAttention sizes the split and the workspace", "[cuda]") {
  DecodeAttentionParams p;
  p.batch = 1;
  p.n_q_heads = 32;
  p.n_kv_heads = 8;
  p.head_dim = 128;
  p.max_kv_len = 131072;
  const DecodePlan one = PlanDecodeAttention(p, 132);
  REQUIRE(one.chunk_len % kDecodeTile == 0);
  REQUIRE(one.chunk_len * one.num_chunks >= p.max_kv_len);
  REQUIRE(one.num_chunks * 8 == 264);  // one full wave of 2 x 132 blocks
  p.batch = 16;
  REQUIRE(PlanDecodeAttention(p, 132).num_chunks == 2);  // 16 x 8 x 2 = 256 blocks: one wave
  REQUIRE(PlanDecodeAttention(p, 132, DecodePlanOptions{0, false}).num_chunks == 2);
  p.max_kv_len = 32768;
  REQUIRE(PlanDecodeAttention(p, 132).num_chunks == 2);
  p.max_kv_len = 131072;
  p.batch = 1;
  REQUIRE(one.fused_merge);
  REQUIRE(one.workspace_bytes >=
          DecodeCounterBytes(p) + size_t(32) * one.num_chunks * (128 * 4 + 8));
  REQUIRE(DecodeCounterBytes(p) == 256);
  const DecodePlan unfused = PlanDecodeAttention(p, 132, DecodePlanOptions{0, false});
  REQUIRE(!unfused.fused_merge);
  REQUIRE(unfused.num_chunks == one.num_chunks);
  // Within a workspace: the planner's split when it fits, else fewer chunks that fit.
  const DecodePlan roomy = PlanDecodeAttentionWithin(p, 132, one.workspace_bytes);
  REQUIRE(roomy.num_chunks == one.num_chunks);
  for (size_t bytes : {size_t{4096}, size_t{40000}, one.workspace_bytes - 1, size_t{0}}) {
    const DecodePlan within = PlanDecodeAttentionWithin(p, 132, bytes);
    INFO("bytes " << bytes << " chunks " << within.num_chunks);
    REQUIRE(within.workspace_bytes <= bytes);
    REQUIRE(within.chunk_len * within.num_chunks >= p.max_kv_len);
    REQUIRE(within.num_chunks < one.num_chunks);
    if (bytes >= 40000) REQUIRE(within.num_chunks > 1);
  }
  p.max_kv_len = 100;
  const DecodePlan small = PlanDecodeAttention(p, 132);
  REQUIRE(small.num_chunks == 1);
  REQUIRE(small.workspace_bytes == 0);
  p.max_kv_len = 0;
  REQUIRE(PlanDecodeAttention(p, 132).num_chunks == 1);
  const DecodePlan forced = PlanDecodeAttention(p, 132, 40);  // rounded up to a tile multiple
  REQUIRE(forced.chunk_len == kDecodeTile);
  // Dense contexts keep the three-tile ring; sparse ones take two tiles (three blocks per SM)
  // where the chunks come out long: batch 16 over 16,552 selected keys, 3 chunks of 5,568; at
  // batch 1 the chunks are short (384 keys with three blocks per SM): three tiles, 512-key chunks.
  REQUIRE(one.stages == 3);
  p.batch = 16;
  p.max_kv_len = 131072;
  REQUIRE(PlanDecodeAttention(p, 132).stages == 3);
  alignas(16) static int2 fake_segments[1];
  p.sparse.segments = fake_segments;
  p.max_kv_len = 16552;
  const DecodePlan sparse16 = PlanDecodeAttention(p, 132);
  REQUIRE(sparse16.stages == 2);
  REQUIRE(sparse16.num_chunks == 3);
  REQUIRE(sparse16.chunk_len == 5568);
  p.batch = 1;
  const DecodePlan sparse1 = PlanDecodeAttention(p, 132);
  REQUIRE(sparse1.stages == 3);
  REQUIRE(sparse1.chunk_len == 512);
  DecodePlanOptions two;
  two.mma_stages = 2;
  REQUIRE(PlanDecodeAttention(p, 132, two).stages == 2);
  // Whole contexts as sparse lists (budget 1): at batch 1 too few units, at batch 32 the
  // two-tile split would take two waves: three tiles, the dense kernel's split.
  p.max_kv_len = 131072;
  REQUIRE(PlanDecodeAttention(p, 132).stages == 3);
  p.batch = 32;
  REQUIRE(PlanDecodeAttention(p, 132).stages == 3);
}

TEST_CASE("DecodeAttention rejects unsupported or inconsistent arguments", "[cuda]") {
  DecodeAttentionParams p;
  p.batch = 2;
  p.n_q_heads = 32;
  p.n_kv_heads = 8;
  p.head_dim = 80;
  p.scale = 0.1f;
  p.q = reinterpret_cast<const bf16*>(0x1000);
  p.q_stride = 32 * 80;
  p.max_kv_len = 10;
  float* out = reinterpret_cast<float*>(0x1000);
  DecodePlan plan = PlanDecodeAttention(p, 132);
  Status s = DecodeAttention<float>(p, plan, out, nullptr, nullptr, 0, nullptr);
  REQUIRE(s.code() == StatusCode::kUnimplemented);
  REQUIRE(s.message().find("head_dim 80") != std::string::npos);
  p.head_dim = 128;
  p.q_stride = 32 * 128;
  p.n_kv_heads = 2;  // group 16
  s = DecodeAttention<float>(p, plan, out, nullptr, nullptr, 0, nullptr);
  REQUIRE(s.code() == StatusCode::kUnimplemented);
  p.n_kv_heads = 8;
  p.max_kv_len = 100000;  // the plan was for 10 keys
  s = DecodeAttention<float>(p, plan, out, nullptr, nullptr, 0, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("plan") != std::string::npos);
  plan = PlanDecodeAttention(p, 132);
  REQUIRE(plan.workspace_bytes > 0);
  s = DecodeAttention<float>(p, plan, out, nullptr, nullptr, 0, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("workspace") != std::string::npos);
  p.own_len = reinterpret_cast<const int32_t*>(0x1000);  // without a block table
  s = DecodeAttention<float>(p, plan, out, nullptr, reinterpret_cast<void*>(0x1000),
                             plan.workspace_bytes, nullptr);
  REQUIRE(s.code() == StatusCode::kInvalidArgument);
  REQUIRE(s.message().find("block_indptr") != std::string::npos);
}

}  // namespace
}  // namespace sqz::cuda
