// C ABI over the query-time Squeezed Attention kernels, for the Python benchmark driver (bench.py):
// the driver allocates contexts, indexes, queries and outputs with torch and passes raw device
// pointers; this library plans, owns the small per-case buffers (views, segment lists,
// workspaces) and launches SqueezeSelect, sparse DecodeAttention and dense DecodeAttention on the
// stream the driver passes (torch's current stream; inside torch.cuda.graph capture that is the
// capture stream, so the driver can time graph replays: no launch gaps from Python).
//
// Every request of a case reads the same context (the product's case: many queries over one
// registered context); each request has its own query. No own tokens (own_len = 0): the benchmark
// measures the fixed-context part. Functions return 0 on success, else -1 with sqzb_last_error().
// Not thread safe (one driver thread).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/squeeze_select.h"

namespace {

using sqz::Status;
using namespace sqz::cuda;

std::string g_error;

int Fail(const std::string& what) {
  g_error = what;
  return -1;
}
int Check(const Status& s) { return s.ok() ? 0 : Fail(s.ToString()); }
int Check(cudaError_t e, const char* what) {
  return e == cudaSuccess ? 0 : Fail(std::string(what) + ": " + cudaGetErrorString(e));
}

// One benchmark case: device buffers owned here, context and index borrowed from the driver.
struct Case {
  SqueezeSelectParams select;
  SqueezeSelectPlan select_plan;
  int auto_select_ctas = 1;  // the plan's choice for the device's SM count
  // sqzb_squeezed launches the attention as a programmatic dependent of the lookup
  // (sqzb_set_chained; the lookup's own chaining is in select_plan).
  bool chained = false;
  // Every request reads the one context: a single scoring group (SqueezeSelectParams
  // group_starts), set on select while grouped scoring is on.
  int32_t* group_starts = nullptr;  // device [2]: 0, batch
  DecodeAttentionParams dense, sparse;
  DecodePlan dense_plan, sparse_plan;
  // Owned device memory.
  SqueezeLayerView* views = nullptr;
  int32_t* ctx_len = nullptr;
  const __nv_bfloat16** ctx_k = nullptr;
  const __nv_bfloat16** ctx_v = nullptr;
  int2* segments = nullptr;
  int32_t* num_segments = nullptr;
  int32_t* selected_len = nullptr;
  int32_t* body_selected = nullptr;
  void* select_ws = nullptr;
  void* dense_ws = nullptr;
  void* sparse_ws = nullptr;
  int units = 0;

  ~Case() {
    for (void* p :
         {static_cast<void*>(views), static_cast<void*>(ctx_len), static_cast<void*>(ctx_k),
          static_cast<void*>(ctx_v), static_cast<void*>(segments), static_cast<void*>(num_segments),
          static_cast<void*>(selected_len), static_cast<void*>(body_selected),
          static_cast<void*>(group_starts), select_ws, dense_ws, sparse_ws}) {
      if (p) cudaFree(p);
    }
  }
};

template <typename T>
int Alloc(T** p, size_t bytes) {
  return Check(cudaMalloc(reinterpret_cast<void**>(p), bytes < 16 ? 16 : bytes), "cudaMalloc");
}

}  // namespace

namespace sqz_bench {
// Shared with squeeze_prefill_capi.cc: records the error sqzb_last_error() returns.
int SetError(const std::string& what) { return Fail(what); }
}  // namespace sqz_bench

extern "C" {

const char* sqzb_last_error() { return g_error.c_str(); }

// Scores the case's requests together (on: one group over the shared context) or each alone
// (off: the per-request scoring kernel). Returns on.
int sqzb_set_grouped_scoring(void* handle, int on);

// Creates a case. Device pointers: k, v [hkv][n_tokens][d] bf16 (sink | body in cluster order |
// window); centroids [hkv][k][d] bf16; counts [hkv][k], offsets [hkv][k + 1] int32; q
// [batch][hq][d] bf16. largest_cluster bounds the selection (host-side). num_sms sizes the split
// and picks the selection step's path (sqzb_set_select_ctas overrides it). Scoring is grouped
// unless the environment sets SQZ_BENCH_UNGROUPED=1 (sqzb_set_grouped_scoring overrides it).
// Returns the case, or nullptr (sqzb_last_error says why).
void* sqzb_create(int batch, int hq, int hkv, int d, int n_tokens, int sink, int window,
                  int num_clusters, int largest_cluster, const void* k, const void* v,
                  const void* centroids, const int32_t* counts, const int32_t* offsets,
                  const void* q, float kv_budget, int num_sms) {
  auto* c = new Case;
  auto fail = [&]() -> void* {
    delete c;
    return nullptr;
  };
  c->units = batch * hkv;
  SqueezeLayerView view;
  view.n_tokens = n_tokens;
  view.sink_len = sink;
  view.window_len = window;
  view.num_clusters = num_clusters;
  view.centroids = static_cast<const __nv_bfloat16*>(centroids);
  view.counts = counts;
  view.offsets = offsets;
  std::vector<SqueezeLayerView> views(batch, view);
  std::vector<int32_t> lens(batch, n_tokens);
  const std::vector<int32_t> starts = {0, batch};
  std::vector<const __nv_bfloat16*> kp(batch, static_cast<const __nv_bfloat16*>(k));
  std::vector<const __nv_bfloat16*> vp(batch, static_cast<const __nv_bfloat16*>(v));
  if (Alloc(&c->views, sizeof(SqueezeLayerView) * batch) || Alloc(&c->ctx_len, 4 * batch) ||
      Alloc(&c->ctx_k, sizeof(void*) * batch) || Alloc(&c->ctx_v, sizeof(void*) * batch) ||
      Check(cudaMemcpy(c->views, views.data(), sizeof(SqueezeLayerView) * batch,
                       cudaMemcpyHostToDevice),
            "upload views") ||
      Check(cudaMemcpy(c->ctx_len, lens.data(), 4 * batch, cudaMemcpyHostToDevice), "upload") ||
      Check(cudaMemcpy(c->ctx_k, kp.data(), sizeof(void*) * batch, cudaMemcpyHostToDevice),
            "upload") ||
      Check(cudaMemcpy(c->ctx_v, vp.data(), sizeof(void*) * batch, cudaMemcpyHostToDevice),
            "upload") ||
      Alloc(&c->group_starts, 4 * starts.size()) ||
      Check(cudaMemcpy(c->group_starts, starts.data(), 4 * starts.size(), cudaMemcpyHostToDevice),
            "upload")) {
    return fail();
  }
  SqueezeSelectParams& sp = c->select;
  sp.batch = batch;
  sp.n_q_heads = hq;
  sp.n_kv_heads = hkv;
  sp.head_dim = d;
  sp.scale = 1.0f / std::sqrt(static_cast<float>(d));
  sp.q = static_cast<const __nv_bfloat16*>(q);
  sp.q_stride = static_cast<int64_t>(hq) * d;
  sp.views = c->views;
  sp.policy = SqueezePolicy::kBudget;
  sp.reduce = SqueezeReduce::kMax;
  sp.kv_budget = kv_budget;
  sp.max_clusters = num_clusters;
  const char* ungrouped = std::getenv("SQZ_BENCH_UNGROUPED");
  sqzb_set_grouped_scoring(c, ungrouped == nullptr || std::string(ungrouped) != "1");
  c->select_plan = PlanSqueezeSelect(sp, num_sms);
  c->auto_select_ctas = c->select_plan.select_ctas;
  if (Alloc(&c->select_ws, c->select_plan.workspace_bytes) ||
      Alloc(&c->segments, sizeof(int2) * c->units * c->select_plan.max_segments) ||
      Alloc(&c->num_segments, 4 * c->units) || Alloc(&c->selected_len, 4 * c->units) ||
      Alloc(&c->body_selected, 4 * c->units)) {
    return fail();
  }

  DecodeAttentionParams& dp = c->dense;
  dp.batch = batch;
  dp.n_q_heads = hq;
  dp.n_kv_heads = hkv;
  dp.head_dim = d;
  dp.scale = sp.scale;
  dp.q = sp.q;
  dp.q_stride = sp.q_stride;
  dp.ctx_len = c->ctx_len;
  dp.ctx_k = c->ctx_k;
  dp.ctx_v = c->ctx_v;
  dp.max_kv_len = n_tokens;
  // SQZ_BENCH_MERGE_KERNEL=1: DecodeAttention's previous path (a separate merge kernel), to
  // compare with the default merge fused into the chunk kernel.
  DecodePlanOptions decode_options;
  const char* merge_kernel = std::getenv("SQZ_BENCH_MERGE_KERNEL");
  decode_options.fused_merge = merge_kernel == nullptr || std::string(merge_kernel) != "1";
  // SQZ_BENCH_DENSE_STAGES=2/3 forces the dense kernel's ring (the planner's choice otherwise).
  DecodePlanOptions dense_options = decode_options;
  if (const char* stages = std::getenv("SQZ_BENCH_DENSE_STAGES")) {
    dense_options.mma_stages = std::atoi(stages);
  }
  c->dense_plan = PlanDecodeAttention(dp, num_sms, dense_options);
  c->sparse = dp;
  c->sparse.sparse =
      ContextSegments{c->segments, c->num_segments, c->selected_len, c->select_plan.max_segments};
  const int64_t body = static_cast<int64_t>(n_tokens) - sink - window;
  c->sparse.max_kv_len = SqueezeMaxSelectedKeys(SqueezePolicy::kBudget, kv_budget, sink, body,
                                                window, largest_cluster);
  // SQZ_BENCH_SPARSE_CHUNK=K: the sparse decode split into chunks of K keys (the planner's choice
  // otherwise), to measure the split's effect on the selected keys' reads.
  DecodePlanOptions sparse_options = decode_options;
  if (const char* chunk = std::getenv("SQZ_BENCH_SPARSE_CHUNK")) {
    sparse_options.force_chunk_len = std::atoll(chunk);
  }
  // SQZ_BENCH_SPARSE_STAGES=2: the sparse decode's two-tile ring (three blocks per SM).
  if (const char* stages = std::getenv("SQZ_BENCH_SPARSE_STAGES")) {
    sparse_options.mma_stages = std::atoi(stages);
  }
  c->sparse_plan = PlanDecodeAttention(c->sparse, num_sms, sparse_options);
  if (Alloc(&c->dense_ws, c->dense_plan.workspace_bytes) ||
      Alloc(&c->sparse_ws, c->sparse_plan.workspace_bytes) ||
      Check(cudaMemset(c->dense_ws, 0, c->dense_plan.workspace_bytes), "zero workspace") ||
      Check(cudaMemset(c->sparse_ws, 0, c->sparse_plan.workspace_bytes), "zero workspace")) {
    return fail();
  }
  return c;
}

void sqzb_destroy(void* handle) { delete static_cast<Case*>(handle); }

// The lookup alone (segments into the case's buffers).
int sqzb_select(void* handle, void* stream) {
  Case* c = static_cast<Case*>(handle);
  const SqueezeSelection out{c->segments, c->num_segments, c->selected_len, c->body_selected};
  return Check(SqueezeSelect(c->select, c->select_plan, out, c->select_ws,
                             c->select_plan.workspace_bytes, static_cast<cudaStream_t>(stream)));
}

int sqzb_set_grouped_scoring(void* handle, int on) {
  Case* c = static_cast<Case*>(handle);
  c->select.group_starts = on ? c->group_starts : nullptr;
  c->select.num_groups = on ? 1 : 0;
  c->select.max_group_size = on ? c->select.batch : 0;
  return on ? 1 : 0;
}

// Selection step path of later calls: ctas CTAs per (request, kv head) (1: the single-block
// kernel; 2, 4, 8, 16: a cluster), or 0 for the plan's choice. Returns the CTAs now in use, or -1
// when the case's shapes do not fit that cluster size.
int sqzb_set_select_ctas(void* handle, int ctas) {
  Case* c = static_cast<Case*>(handle);
  if (ctas == 0) ctas = c->auto_select_ctas;
  if (ctas != 1 && !SqueezeClusterSelectFits(c->select, ctas)) {
    return Fail("select_ctas " + std::to_string(ctas) + " does not fit this case");
  }
  c->select_plan.select_ctas = ctas;
  return ctas;
}

// Sparse attention over the last selection; out: [batch][hq][d] bf16.
int sqzb_sparse_attention(void* handle, void* out, void* stream) {
  Case* c = static_cast<Case*>(handle);
  return Check(DecodeAttention<__nv_bfloat16>(
      c->sparse, c->sparse_plan, static_cast<__nv_bfloat16*>(out), nullptr, c->sparse_ws,
      c->sparse_plan.workspace_bytes, static_cast<cudaStream_t>(stream)));
}

// Lookup then sparse attention, back to back (chained: programmatic launches, sqzb_set_chained).
int sqzb_squeezed(void* handle, void* out, void* stream) {
  Case* c = static_cast<Case*>(handle);
  if (sqzb_select(handle, stream) != 0) return -1;
  DecodeAttentionParams p = c->sparse;
  p.programmatic = c->chained;
  return Check(DecodeAttention<__nv_bfloat16>(p, c->sparse_plan, static_cast<__nv_bfloat16*>(out),
                                              nullptr, c->sparse_ws, c->sparse_plan.workspace_bytes,
                                              static_cast<cudaStream_t>(stream)));
}

// Programmatic launches: bit 0 the lookup's selection kernel after its scoring kernel
// (SqueezeSelectPlan::chained), bit 1 the attention after the lookup in sqzb_squeezed
// (DecodeAttentionParams::programmatic). Returns mode.
int sqzb_set_chained(void* handle, int mode) {
  Case* c = static_cast<Case*>(handle);
  c->select_plan.chained = (mode & 1) != 0;
  c->chained = (mode & 2) != 0;
  return mode;
}

// Dense attention over the whole context; out: [batch][hq][d] bf16.
int sqzb_dense(void* handle, void* out, void* stream) {
  Case* c = static_cast<Case*>(handle);
  return Check(DecodeAttention<__nv_bfloat16>(
      c->dense, c->dense_plan, static_cast<__nv_bfloat16*>(out), nullptr, c->dense_ws,
      c->dense_plan.workspace_bytes, static_cast<cudaStream_t>(stream)));
}

// Copies the selected key counts [batch][hkv] (sink and window included) to host memory
// (synchronises; not for timed regions). Also reports the split sizes.
int sqzb_selected(void* handle, int32_t* host_selected_len, int32_t* host_plan) {
  Case* c = static_cast<Case*>(handle);
  if (Check(cudaMemcpy(host_selected_len, c->selected_len, 4 * c->units, cudaMemcpyDeviceToHost),
            "download")) {
    return -1;
  }
  host_plan[0] = c->dense_plan.num_chunks;
  host_plan[1] = static_cast<int32_t>(c->dense_plan.chunk_len);
  host_plan[2] = c->sparse_plan.num_chunks;
  host_plan[3] = static_cast<int32_t>(c->sparse_plan.chunk_len);
  host_plan[4] = c->select_plan.fine_chunks;
  return 0;
}

}  // extern "C"
