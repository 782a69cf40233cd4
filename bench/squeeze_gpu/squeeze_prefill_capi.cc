// C ABI over the prefill side of Squeezed Attention, for the Python benchmark driver (bench.py
// --prefill): one request's user input of n_q tokens against a registered context, cut into
// blocks of block_size tokens. The driver allocates the context, its index, the queries and the
// own tokens' K/V with torch and passes raw device pointers; this library plans, owns the small
// per-case buffers (views, block starts, segment lists, workspaces, partials) and launches on the
// stream the driver passes (capturable in torch.cuda.graph).
//   dense:    PrefillAttention (no mask) over the whole context with (m, l), PrefillAttention
//             (causal) over the own tokens with (m, l), MergeAttentionPartials;
//   squeezed: SqueezeSelect per block + SparsePrefillAttention, then the same own-token part and
//             merge.
// Functions return 0 on success, else -1 with sqzb_last_error() (squeeze_bench_capi.cc). Not thread
// safe (one driver thread).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/sparse_prefill_attention.h"
#include "kernels/cuda/squeeze_select.h"

namespace sqz_bench {
int SetError(const std::string& what);  // squeeze_bench_capi.cc
}

namespace {

using sqz::Status;
using sqz::cpu::AttentionPartial;
using namespace sqz::cuda;
using bf16 = __nv_bfloat16;

int Check(const Status& s) { return s.ok() ? 0 : sqz_bench::SetError(s.ToString()); }
int Check(cudaError_t e, const char* what) {
  return e == cudaSuccess ? 0
                          : sqz_bench::SetError(std::string(what) + ": " + cudaGetErrorString(e));
}
template <typename T>
int Alloc(T** p, size_t bytes) {
  return Check(cudaMalloc(reinterpret_cast<void**>(p), bytes < 16 ? 16 : bytes), "cudaMalloc");
}
template <typename T>
int Upload(T* dst, const std::vector<T>& src) {
  return Check(cudaMemcpy(dst, src.data(), sizeof(T) * src.size(), cudaMemcpyHostToDevice),
               "upload");
}

struct PrefillCase {
  int n_q = 0, hq = 0, d = 0, units = 0;
  SqueezeSelectParams select;
  SqueezeSelectPlan select_plan;
  SparsePrefillParams sparse, sparse_one;  // sparse_one: forced to one key split
  SparsePrefillPlan sparse_plan, sparse_one_plan;
  PrefillAttentionParams dense_ctx, own;
  // Owned device memory.
  SqueezeLayerView* views = nullptr;
  int32_t* block_starts = nullptr;
  int32_t* ctx_len = nullptr;
  const bf16** ctx_k = nullptr;
  const bf16** ctx_v = nullptr;
  int2* segments = nullptr;
  int32_t* num_segments = nullptr;
  int32_t* selected_len = nullptr;
  void* select_ws = nullptr;
  void* sparse_ws = nullptr;
  bf16* o_own = nullptr;               // [n_q][hq][d]
  AttentionPartial* st_ctx = nullptr;  // [n_q][hq]
  AttentionPartial* st_own = nullptr;  // [n_q][hq]

  ~PrefillCase() {
    for (void* p :
         {static_cast<void*>(views), static_cast<void*>(block_starts), static_cast<void*>(ctx_len),
          static_cast<void*>(ctx_k), static_cast<void*>(ctx_v), static_cast<void*>(segments),
          static_cast<void*>(num_segments), static_cast<void*>(selected_len), select_ws, sparse_ws,
          static_cast<void*>(o_own), static_cast<void*>(st_ctx), static_cast<void*>(st_own)}) {
      if (p) cudaFree(p);
    }
  }
};

}  // namespace

extern "C" {

// Creates a prefill case. Device pointers: k, v [hkv][n_tokens][d] bf16 (sink | body in cluster
// order | window); centroids [hkv][k][d] bf16; counts [hkv][k], offsets [hkv][k + 1] int32; q
// [n_q][hq][d] bf16; own_k, own_v [n_q][hkv][d] bf16 (the user input's keys and values).
void* sqzb_prefill_create(int n_q, int block_size, int hq, int hkv, int d, int n_tokens, int sink,
                          int window, int num_clusters, int largest_cluster, const void* k,
                          const void* v, const void* centroids, const int32_t* counts,
                          const int32_t* offsets, const void* q, const void* own_k,
                          const void* own_v, float kv_budget) {
  auto* c = new PrefillCase;
  auto fail = [&]() -> void* {
    delete c;
    return nullptr;
  };
  if (n_q < 1 || block_size < 1) {
    sqz_bench::SetError("n_q and block_size must be >= 1");
    return fail();
  }
  const int nb = (n_q + block_size - 1) / block_size;
  c->n_q = n_q;
  c->hq = hq;
  c->d = d;
  c->units = nb * hkv;
  SqueezeLayerView view;
  view.n_tokens = n_tokens;
  view.sink_len = sink;
  view.window_len = window;
  view.num_clusters = num_clusters;
  view.centroids = static_cast<const bf16*>(centroids);
  view.counts = counts;
  view.offsets = offsets;
  std::vector<int32_t> starts;
  for (int t = 0; t < n_q; t += block_size) starts.push_back(t);
  starts.push_back(n_q);
  const auto* kb = static_cast<const bf16*>(k);
  const auto* vb = static_cast<const bf16*>(v);
  if (Alloc(&c->views, sizeof(SqueezeLayerView) * nb) || Alloc(&c->block_starts, 4 * (nb + 1)) ||
      Alloc(&c->ctx_len, 4 * nb) || Alloc(&c->ctx_k, sizeof(void*) * nb) ||
      Alloc(&c->ctx_v, sizeof(void*) * nb) ||
      Upload(c->views, std::vector<SqueezeLayerView>(nb, view)) ||
      Upload(c->block_starts, starts) || Upload(c->ctx_len, std::vector<int32_t>(nb, n_tokens)) ||
      Upload(c->ctx_k, std::vector<const bf16*>(nb, kb)) ||
      Upload(c->ctx_v, std::vector<const bf16*>(nb, vb))) {
    return fail();
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t stride = static_cast<int64_t>(hq) * d;
  SqueezeSelectParams& sp = c->select;
  sp.batch = nb;
  sp.n_q_heads = hq;
  sp.n_kv_heads = hkv;
  sp.head_dim = d;
  sp.scale = scale;
  sp.q = static_cast<const bf16*>(q);
  sp.q_stride = stride;
  sp.views = c->views;
  sp.policy = SqueezePolicy::kBudget;
  sp.reduce = SqueezeReduce::kMax;
  sp.kv_budget = kv_budget;
  sp.max_clusters = num_clusters;
  sp.block_starts = c->block_starts;
  sp.max_block_tokens = block_size;
  int sms = 0;
  if (Check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "SM count")) {
    return fail();
  }
  c->select_plan = PlanSqueezeSelect(sp, sms);
  if (Alloc(&c->select_ws, c->select_plan.workspace_bytes) ||
      Alloc(&c->segments, sizeof(int2) * c->units * c->select_plan.max_segments) ||
      Alloc(&c->num_segments, 4 * c->units) || Alloc(&c->selected_len, 4 * c->units)) {
    return fail();
  }
  SparsePrefillParams& pp = c->sparse;
  pp.num_blocks = nb;
  pp.n_q_heads = hq;
  pp.n_kv_heads = hkv;
  pp.head_dim = d;
  pp.scale = scale;
  pp.q = sp.q;
  pp.q_stride = stride;
  pp.block_starts = c->block_starts;
  pp.max_block_tokens = block_size;
  pp.ctx_len = c->ctx_len;
  pp.ctx_k = c->ctx_k;
  pp.ctx_v = c->ctx_v;
  pp.segments =
      ContextSegments{c->segments, c->num_segments, c->selected_len, c->select_plan.max_segments};
  const int64_t body = static_cast<int64_t>(n_tokens) - sink - window;
  pp.max_selected = SqueezeMaxSelectedKeys(SqueezePolicy::kBudget, kv_budget, sink, body, window,
                                           largest_cluster);
  // SQZ_BENCH_PREFILL_SPLITS=K forces K key splits (the planner's choice otherwise).
  if (const char* splits = std::getenv("SQZ_BENCH_PREFILL_SPLITS"))
    pp.num_splits = std::atoi(splits);
  c->sparse_plan = PlanSparsePrefill(pp, sms);
  // SQZ_BENCH_BLOCKS_INNER=0/1 forces the sparse prefill's CTA order (the plan's otherwise).
  if (const char* order = std::getenv("SQZ_BENCH_BLOCKS_INNER")) {
    c->sparse_plan.blocks_inner = std::string(order) == "1";
  }
  c->sparse_one = pp;
  c->sparse_one.num_splits = 1;
  c->sparse_one_plan = PlanSparsePrefill(c->sparse_one);
  const size_t rows = static_cast<size_t>(n_q) * hq;
  if (Alloc(&c->sparse_ws,
            std::max(c->sparse_plan.workspace_bytes, c->sparse_one_plan.workspace_bytes)) ||
      Alloc(&c->o_own, rows * d * sizeof(bf16)) ||
      Alloc(&c->st_ctx, rows * sizeof(AttentionPartial)) ||
      Alloc(&c->st_own, rows * sizeof(AttentionPartial))) {
    return fail();
  }
  PrefillAttentionParams& dp = c->dense_ctx;
  dp.q = sp.q;
  dp.q_token_stride = stride;
  dp.k = kb;
  dp.v = vb;
  dp.kv_token_stride = d;
  dp.kv_head_stride = static_cast<int64_t>(n_tokens) * d;
  dp.n_q = n_q;
  dp.n_kv = n_tokens;
  dp.n_q_heads = hq;
  dp.n_kv_heads = hkv;
  dp.head_dim = d;
  dp.scale = scale;
  dp.causal = false;
  c->own = dp;
  c->own.k = static_cast<const bf16*>(own_k);
  c->own.v = static_cast<const bf16*>(own_v);
  c->own.kv_token_stride = static_cast<int64_t>(hkv) * d;
  c->own.kv_head_stride = d;
  c->own.n_kv = n_q;
  c->own.causal = true;
  c->own.q_offset = 0;
  return c;
}

void sqzb_prefill_destroy(void* handle) { delete static_cast<PrefillCase*>(handle); }

// The per-block lookup alone.
int sqzb_prefill_select(void* handle, void* stream) {
  auto* c = static_cast<PrefillCase*>(handle);
  const SqueezeSelection out{c->segments, c->num_segments, c->selected_len, nullptr};
  return Check(SqueezeSelect(c->select, c->select_plan, out, c->select_ws,
                             c->select_plan.workspace_bytes, static_cast<cudaStream_t>(stream)));
}

// Sparse attention over the last selection into out [n_q][hq][d] bf16 (context part only).
int sqzb_prefill_sparse(void* handle, void* out, void* stream) {
  auto* c = static_cast<PrefillCase*>(handle);
  return Check(SparsePrefillAttention<bf16>(
      c->sparse, c->sparse_plan, static_cast<bf16*>(out), static_cast<int64_t>(c->hq) * c->d,
      c->st_ctx, c->sparse_ws, c->sparse_plan.workspace_bytes, static_cast<cudaStream_t>(stream)));
}

// The same with one key split (the split's effect, measured in the same run).
int sqzb_prefill_sparse_one_split(void* handle, void* out, void* stream) {
  auto* c = static_cast<PrefillCase*>(handle);
  return Check(SparsePrefillAttention<bf16>(
      c->sparse_one, c->sparse_one_plan, static_cast<bf16*>(out),
      static_cast<int64_t>(c->hq) * c->d, c->st_ctx, c->sparse_ws,
      c->sparse_one_plan.workspace_bytes, static_cast<cudaStream_t>(stream)));
}

// Dense attention over the whole context into out (context part only).
int sqzb_prefill_dense_ctx(void* handle, void* out, void* stream) {
  auto* c = static_cast<PrefillCase*>(handle);
  return Check(PrefillAttention<bf16>(c->dense_ctx, static_cast<bf16*>(out),
                                      static_cast<int64_t>(c->hq) * c->d, c->st_ctx,
                                      static_cast<cudaStream_t>(stream)));
}

// The own-token part (causal) and its merge into out, which holds a context partial.
int sqzb_prefill_own_merge(void* handle, void* out, void* stream) {
  auto* c = static_cast<PrefillCase*>(handle);
  auto s = static_cast<cudaStream_t>(stream);
  if (Check(PrefillAttention<bf16>(c->own, c->o_own, static_cast<int64_t>(c->hq) * c->d, c->st_own,
                                   s))) {
    return -1;
  }
  return Check(MergeAttentionPartials<bf16>(static_cast<bf16*>(out), c->st_ctx, c->o_own, c->st_own,
                                            static_cast<int64_t>(c->n_q) * c->hq, c->d, s));
}

int sqzb_prefill_dense(void* handle, void* out, void* stream) {
  if (sqzb_prefill_dense_ctx(handle, out, stream)) return -1;
  return sqzb_prefill_own_merge(handle, out, stream);
}

int sqzb_prefill_squeezed(void* handle, void* out, void* stream) {
  if (sqzb_prefill_select(handle, stream) || sqzb_prefill_sparse(handle, out, stream)) return -1;
  return sqzb_prefill_own_merge(handle, out, stream);
}

// Selected keys per (block, kv head), sink and window included, into host memory (synchronises);
// host_info [5]: units, max_selected, scoring chunks, row tiles, key splits.
int sqzb_prefill_selected(void* handle, int32_t* host_selected_len, int32_t* host_info) {
  auto* c = static_cast<PrefillCase*>(handle);
  if (Check(cudaMemcpy(host_selected_len, c->selected_len, 4 * c->units, cudaMemcpyDeviceToHost),
            "download")) {
    return -1;
  }
  host_info[0] = c->units;
  host_info[1] = static_cast<int32_t>(c->sparse.max_selected);
  host_info[2] = c->select_plan.fine_chunks;
  host_info[3] = c->sparse_plan.row_tiles;
  host_info[4] = c->sparse_plan.splits;
  return 0;
}

}  // extern "C"
