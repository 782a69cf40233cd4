#include "engine/cuda/cuda_backend.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "common/check.h"
#include "engine/cuda/context_step.h"
#include "engine/cuda/cuda_backend_impl.h"
#include "engine/cuda/cuda_weights.h"
#include "engine/cuda/device_memory.h"
#include "engine/cuda/device_sampler.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/model_ops.h"
#include "kernels/cuda/prefill_attention.h"

namespace sqz {

namespace {

using bf16 = __nv_bfloat16;

template <typename T>
float ToFloatHost(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return __bfloat162float(x);
  }
}

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// An instantiated CUDA graph; destroyed with its owner.
class GraphExec {
 public:
  GraphExec() = default;
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  ~GraphExec() {
    if (exec_) cudaGraphExecDestroy(exec_);
  }
  cudaGraphExec_t get() const { return exec_; }
  void reset(cudaGraphExec_t exec) {
    if (exec_) cudaGraphExecDestroy(exec_);
    exec_ = exec;
  }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Adds `what` in front of a failed status's message.
Status Annotate(const Status& s, const std::string& what) { return s.WithContext(what); }

template <typename T>
class ForwardImpl final : public CudaBackend::Impl {
 public:
  static StatusOr<std::unique_ptr<ForwardImpl>> Create(const ModelConfig& config,
                                                       const Model* model,
                                                       const CudaBackendOptions& options,
                                                       uint64_t seed);
  ~ForwardImpl() override {
    if (stream_) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }

  Status Run(const StepLayout& layout, std::span<const StepInput> batch,
             std::span<const StepContext> contexts, float* logits,
             std::span<const TokenSampling> sampling, int32_t* tokens) override;
  Status ReadKv(const std::vector<int32_t>& blocks, int layer, int64_t begin, int64_t n, float* k,
                float* v) override;
  Status GatherKv(const std::vector<int32_t>& blocks, int layer, int64_t begin, int64_t n, void* k,
                  void* v) override {
    const int64_t first = begin / kKvBlockTokens, table = (n + kKvBlockTokens - 1) / kKvBlockTokens;
    std::memcpy(pinned_.get(), blocks.data() + first, table * 4);
    SQZ_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(meta_, pinned_.get(), table * 4, cudaMemcpyHostToDevice, stream_),
        "CopyKvToDevice: block table");
    SQZ_RETURN_IF_ERROR(Annotate(
        cuda::GatherPagedKv<T>(PoolK(layer), PoolV(layer), meta_, n, static_cast<int>(c_.kv_heads),
                               static_cast<int>(c_.head_dim), static_cast<T*>(k),
                               static_cast<T*>(v), stream_),
        "CopyKvToDevice"));
    SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "CopyKvToDevice");
    return OkStatus();
  }
  size_t weight_bytes() const override { return weights_->bytes(); }
  size_t kv_pool_bytes() const override { return pool_.bytes(); }
  cudaStream_t stream() const override { return stream_; }
  CudaBackend::GraphStats graph_stats() const override { return graph_stats_; }
  void set_cuda_graphs(bool on) override { graphs_on_ = on; }
  void set_sparse_prefill(bool on) override { ctx_step_->set_sparse_prefill(on); }
  void set_group_context_lookups(bool on) override { ctx_step_->set_group_lookups(on); }
  void set_context_prefill_kv_splits(int splits) override {
    ctx_step_->set_context_prefill_kv_splits(splits);
  }
  void set_streaming_gemv(bool on) override {
    gemv_plan_.kernel = on ? cuda::GemvKernel::kStreaming : cuda::GemvKernel::kWarpPerRow;
    graphs_.clear();
  }
  void set_programmatic_launch(bool on) override {
    gemv_plan_.programmatic_launch = on;
    streaming_plan_.programmatic_launch = on;
    graphs_.clear();
  }
  void set_programmatic_attention(bool on) override {
    programmatic_attention_ = on;
    graphs_.clear();
  }
  void set_streaming_o_proj(bool on) override {
    streaming_o_proj_ = on;
    graphs_.clear();
  }

 private:
  // A decode step's graph: captured the second time its signature is seen (the first eager run
  // loads the kernels and lets cuBLASLt choose), replayed after that.
  struct DecodeGraph {
    int64_t seen = 0;
    int64_t last_used = 0;  // graph_clock_ when last seen (the least recent goes first)
    GraphExec exec;
  };
  // Graphs kept at most: a growing sequence meets a new key bucket every ~12% of its length, and
  // steps with contexts add one per mix of lookup classes and per grown buffer.
  static constexpr size_t kMaxGraphs = 64;
  ForwardImpl(const ModelConfig& config, const CudaBackendOptions& options)
      : c_(config),
        o_(options),
        kv_dim_(config.kv_dim()),
        qkv_dim_(config.q_dim() + 2 * config.kv_dim()),
        max_seq_(std::min(config.max_positions, options.kv_blocks * kKvBlockTokens)),
        logit_rows_(std::clamp<int64_t>(options.max_logit_rows, 1, options.max_step_tokens)),
        graphs_on_(options.cuda_graphs) {}

  Status AllocateBuffers();
  // out[m][n] = a[m][k] w[n][k]^T (+ bias), in T.
  // plan: the GEMV's at <= 8 rows in bf16 (gemv_plan_ when null).
  Status Linear(const T* a, const T* w, const T* bias, int64_t m, int64_t n, int64_t k, T* out,
                const cuda::GemvPlan* plan = nullptr);
  // qkv_ = a W_qkv^T (+ bias), q and k rotated, the keys and values written to the layer's pool
  // at slots (one GEMV launch at few rows, else the product then RopeWritePagedKv).
  Status QkvRope(const T* a, const CudaLayerWeights<T>& w, int64_t m, const int32_t* positions,
                 const int32_t* slots, int layer);
  // out = SwiGLU(a W_gate^T, a W_up^T) for the fused [2 cols][k] gate/up weight (through gate_up_,
  // or in one GEMV launch at few rows).
  Status GateUpSwiGlu(const T* a, const T* w_gate_up, int64_t m, int64_t cols, int64_t k, T* out);
  // The LM head: fp32 output.
  Status LmHead(const T* a, int64_t m, float* out);
  Status Attention(const StepLayout& L, int layer, int64_t decode_keys);
  // Enqueues the embedding and every layer (the residual stream ends in x_), with q capture when
  // `capture`. decode_keys: DecodeKeysBucket of the step.
  Status Body(const StepLayout& L, int64_t decode_keys, bool capture);
  // Enqueues the final norm and the LM head of logit rows [r0, r0 + n) into logits_ (n <=
  // logit_rows_).
  Status Head(const StepLayout& L, int64_t r0, int64_t n);
  // Replays (capturing it first if due) the graph of a decode step's Body + Head. Sets *ran to
  // whether it did; false means the caller runs the step eagerly.
  Status RunGraph(const StepLayout& L, int64_t decode_keys, bool* ran);
  Status CaptureQ(const StepLayout& L, int layer);
  T* PoolK(int layer) const {
    return pool_.get<T>() + static_cast<int64_t>(layer) * pool_layer_elems_;
  }
  T* PoolV(int layer) const {
    return pool_.get<T>() + (c_.layers + static_cast<int64_t>(layer)) * pool_layer_elems_;
  }
  bool DecodeKernelFits() const {
    return std::find(cuda::kDecodeHeadDims.begin(), cuda::kDecodeHeadDims.end(), c_.head_dim) !=
               cuda::kDecodeHeadDims.end() &&
           c_.group_size() <= cuda::kDecodeMaxGroup;
  }

  const ModelConfig c_;
  const CudaBackendOptions o_;
  const int64_t kv_dim_, qkv_dim_, max_seq_, logit_rows_;
  int64_t pool_layer_elems_ = 0;  // kv_blocks * 16 * kv_dim
  int num_sms_ = 1;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_;    // bf16 only
  cuda::GemvPlan gemv_plan_;            // bf16 only: linear layers at <= 8 rows
  bool programmatic_attention_ = true;  // CudaBackendOptions::programmatic_attention
  cuda::GemvPlan streaming_plan_;       // the streaming kernel's (streaming_o_proj)
  bool streaming_o_proj_ = true;        // CudaBackendOptions::streaming_o_proj
  std::unique_ptr<CudaWeights<T>> weights_;
  DeviceMemory pool_;     // [2][layers][kv_blocks][kv_heads][16][head_dim]: K then V
  DeviceMemory scratch_;  // per-step buffers below
  PinnedMemory pinned_;   // staging of the step's int32 metadata
  // Views into scratch_ (R = max_step_tokens).
  float* x_ = nullptr;         // [R][hidden] residual stream
  T* xn_ = nullptr;            // [R][hidden] normed
  T* qkv_ = nullptr;           // [R][qkv_dim]
  T* attn_ = nullptr;          // [R][q_dim]
  T* tmp_ = nullptr;           // [R][hidden] o / down projection output
  T* gate_up_ = nullptr;       // [R][2 intermediate]
  T* act_ = nullptr;           // [R][intermediate]
  float* logits_ = nullptr;    // [logit_rows][vocab]
  T* kbuf_ = nullptr;          // [max_seq][kv_dim] a sequence's keys gathered out of the pool
  T* vbuf_ = nullptr;          // same, values
  int32_t* meta_ = nullptr;    // [StepLayout::MaxInts]
  float* inv_freq_ = nullptr;  // [head_dim / 2]
  void* decode_ws_ = nullptr;
  size_t decode_ws_bytes_ = 0;
  void* gemm_ws_ = nullptr;
  size_t gemm_ws_bytes_ = 0;
  std::vector<T> host_stage_;  // q capture and ReadKv (grown on use; never in a plain decode)
  std::unique_ptr<DeviceSampler> sampler_;  // [logit_rows_] rows per pass
  // By signature: every host value the captured launches depend on (RunGraph).
  std::map<std::vector<int64_t>, DecodeGraph> graphs_;
  int64_t graph_clock_ = 0;  // steps that asked for a graph
  CudaBackend::GraphStats graph_stats_;
  bool graphs_on_;                            // o_.cuda_graphs, or as set_cuda_graphs last said
  std::unique_ptr<ContextStep<T>> ctx_step_;  // attention of steps with fixed contexts
  bool ctx_active_ = false;                   // the current step has contexts
};

template <typename T>
StatusOr<std::unique_ptr<ForwardImpl<T>>> ForwardImpl<T>::Create(const ModelConfig& config,
                                                                 const Model* model,
                                                                 const CudaBackendOptions& options,
                                                                 uint64_t seed) {
  std::unique_ptr<ForwardImpl<T>> impl(new ForwardImpl<T>(config, options));
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&impl->stream_, cudaStreamNonBlocking),
                           "CudaBackend: cudaStreamCreate");
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&impl->num_sms_, cudaDevAttrMultiProcessorCount, options.device),
      "CudaBackend: multiprocessor count");
  if constexpr (std::is_same_v<T, bf16>) {
    SQZ_ASSIGN_OR_RETURN(impl->gemm_, cuda::Gemm::Create());
    SQZ_ASSIGN_OR_RETURN(impl->gemv_plan_,
                         cuda::PlanGemv(options.streaming_gemv ? cuda::GemvKernel::kStreaming
                                                               : cuda::GemvKernel::kWarpPerRow,
                                        options.programmatic_launch));
    impl->programmatic_attention_ = options.programmatic_attention;
    SQZ_ASSIGN_OR_RETURN(impl->streaming_plan_,
                         cuda::PlanGemv(cuda::GemvKernel::kStreaming, options.programmatic_launch));
    impl->streaming_o_proj_ = options.streaming_o_proj;
  }
  const int64_t weight_bytes = config.ParameterCount() * static_cast<int64_t>(sizeof(T));
  if (options.weights_budget_bytes > 0 && weight_bytes > options.weights_budget_bytes) {
    return ResourceExhaustedError("CudaBackend: the weights need " + std::to_string(weight_bytes) +
                                  " bytes (" + std::to_string(config.ParameterCount()) +
                                  " parameters in " + (std::is_same_v<T, float> ? "fp32" : "bf16") +
                                  "), above weights_budget_bytes " +
                                  std::to_string(options.weights_budget_bytes));
  }
  if (model) {
    SQZ_ASSIGN_OR_RETURN(impl->weights_, CudaWeights<T>::Upload(*model));
  } else {
    SQZ_ASSIGN_OR_RETURN(impl->weights_, CudaWeights<T>::Random(config, seed, impl->stream_));
  }
  SQZ_RETURN_IF_ERROR(impl->AllocateBuffers());
  typename ContextStep<T>::Shape cs;
  cs.layers = static_cast<int>(config.layers);
  cs.q_heads = static_cast<int>(config.q_heads);
  cs.kv_heads = static_cast<int>(config.kv_heads);
  cs.head_dim = static_cast<int>(config.head_dim);
  cs.num_sms = impl->num_sms_;
  cs.decode_kernel_fits = impl->DecodeKernelFits();
  cs.sparse_prefill = options.sparse_prefill;
  cs.context_prefill_kv_splits = options.context_prefill_kv_splits;
  cs.group_lookups = options.group_context_lookups;
  impl->ctx_step_ = std::make_unique<ContextStep<T>>(cs, impl->stream_);
  SQZ_ASSIGN_OR_RETURN(impl->sampler_, DeviceSampler::Create(impl->logit_rows_, config.vocab,
                                                             options.max_penalty_tokens));
  return impl;
}

template <typename T>
Status ForwardImpl<T>::AllocateBuffers() {
  const int64_t R = o_.max_step_tokens, H = c_.hidden, I = c_.intermediate;
  pool_layer_elems_ = o_.kv_blocks * kKvBlockTokens * kv_dim_;
  const size_t pool_bytes = 2 * static_cast<size_t>(c_.layers) * pool_layer_elems_ * sizeof(T);
  size_t offset = 0;
  auto take = [&](size_t bytes) {
    const size_t o = offset;
    offset += Align256(bytes);
    return o;
  };
  const size_t x = take(R * H * 4), xn = take(R * H * sizeof(T)),
               qkv = take(R * qkv_dim_ * sizeof(T)), attn = take(R * c_.q_dim() * sizeof(T)),
               tmp = take(R * H * sizeof(T)), gate_up = take(R * 2 * I * sizeof(T)),
               act = take(R * I * sizeof(T)), logits = take(logit_rows_ * c_.vocab * 4),
               kbuf = take(max_seq_ * kv_dim_ * sizeof(T)),
               vbuf = take(max_seq_ * kv_dim_ * sizeof(T)),
               meta = take(StepLayout::MaxInts(R, o_.kv_blocks) * 4),
               inv_freq = take(c_.head_dim / 2 * 4);
  decode_ws_bytes_ = std::is_same_v<T, bf16> ? static_cast<size_t>(o_.decode_workspace_bytes) : 0;
  gemm_ws_bytes_ = std::is_same_v<T, bf16> ? cuda::Gemm::kRecommendedWorkspaceBytes : 0;
  const size_t decode_ws = take(decode_ws_bytes_), gemm_ws = take(gemm_ws_bytes_);

  size_t free_bytes = 0, total_bytes = 0;
  SQZ_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes), "CudaBackend: memory info");
  if (pool_bytes + offset > free_bytes) {
    return ResourceExhaustedError(
        "CudaBackend: the KV pool (" + std::to_string(pool_bytes) + " bytes for " +
        std::to_string(o_.kv_blocks) + " blocks) and step buffers (" + std::to_string(offset) +
        " bytes for max_step_tokens " + std::to_string(R) + ") need more than the " +
        std::to_string(free_bytes) + " bytes free on the device after the weights (" +
        std::to_string(weights_->bytes()) + " bytes)");
  }
  SQZ_ASSIGN_OR_RETURN(pool_, DeviceMemory::Allocate(pool_bytes, "the KV pool"));
  SQZ_ASSIGN_OR_RETURN(scratch_, DeviceMemory::Allocate(offset, "step buffers"));
  SQZ_ASSIGN_OR_RETURN(pinned_, PinnedMemory::Allocate(StepLayout::MaxInts(R, o_.kv_blocks) * 4,
                                                       "step metadata staging"));
  char* base = scratch_.get<char>();
  x_ = reinterpret_cast<float*>(base + x);
  xn_ = reinterpret_cast<T*>(base + xn);
  qkv_ = reinterpret_cast<T*>(base + qkv);
  attn_ = reinterpret_cast<T*>(base + attn);
  tmp_ = reinterpret_cast<T*>(base + tmp);
  gate_up_ = reinterpret_cast<T*>(base + gate_up);
  act_ = reinterpret_cast<T*>(base + act);
  logits_ = reinterpret_cast<float*>(base + logits);
  kbuf_ = reinterpret_cast<T*>(base + kbuf);
  vbuf_ = reinterpret_cast<T*>(base + vbuf);
  meta_ = reinterpret_cast<int32_t*>(base + meta);
  inv_freq_ = reinterpret_cast<float*>(base + inv_freq);
  decode_ws_ = decode_ws_bytes_ ? base + decode_ws : nullptr;
  gemm_ws_ = gemm_ws_bytes_ ? base + gemm_ws : nullptr;
  // DecodeAttention's workspace starts zeroed (its merge counters; every call leaves them zero).
  if (decode_ws_ != nullptr) {
    SQZ_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(decode_ws_, 0, decode_ws_bytes_, stream_),
                             "CudaBackend: zeroing the decode attention workspace");
  }
  // The pool starts zeroed so that a read of a never-written slot is finite (kernels never read
  // one, but ReadKv of a freshly taken block must not show garbage).
  SQZ_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(pool_.get(), 0, pool_.bytes(), stream_),
                           "CudaBackend: zeroing the KV pool");
  std::vector<float> inv(c_.head_dim / 2);
  cpu::RopeInvFreq(c_.rope, c_.head_dim, inv.data());
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(inv_freq_, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice, stream_),
      "CudaBackend: RoPE frequencies");
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "CudaBackend: setup");
  return OkStatus();
}

template <typename T>
Status ForwardImpl<T>::Linear(const T* a, const T* w, const T* bias, int64_t m, int64_t n,
                              int64_t k, T* out, const cuda::GemvPlan* plan) {
  if constexpr (std::is_same_v<T, float>) {
    return cuda::MatMulTransBF32(a, w, bias, m, n, k, out, stream_);
  } else {
    // Few rows (decode): the memory-bound GEMV streams the weights faster than cuBLASLt.
    if (cuda::GemvSupported(a, w, m, k)) {
      return cuda::Gemv<bf16>(plan ? *plan : gemv_plan_, a, w, bias, m, n, k, out, stream_);
    }
    return gemm_->MatMulTransB<bf16>(a, w, bias, m, n, k, out, gemm_ws_, gemm_ws_bytes_, stream_);
  }
}

template <typename T>
Status ForwardImpl<T>::QkvRope(const T* a, const CudaLayerWeights<T>& w, int64_t m,
                               const int32_t* positions, const int32_t* slots, int layer) {
  const int q_heads = static_cast<int>(c_.q_heads), kvh = static_cast<int>(c_.kv_heads);
  const int d = static_cast<int>(c_.head_dim);
  const int64_t k = c_.hidden;
  if constexpr (std::is_same_v<T, bf16>) {
    // Few rows with the warp-per-row GEMV: one launch, the same bits as the two below.
    if (gemv_plan_.kernel == cuda::GemvKernel::kWarpPerRow &&
        cuda::GemvSupported(a, w.wqkv, m, k)) {
      cuda::QkvRopeArgs r;
      r.q_heads = q_heads;
      r.kv_heads = kvh;
      r.head_dim = d;
      r.positions = positions;
      r.slots = slots;
      r.inv_freq = inv_freq_;
      r.pool_k = PoolK(layer);
      r.pool_v = PoolV(layer);
      return cuda::GemvQkvRope(gemv_plan_, a, w.wqkv, w.bqkv, m, k, r, qkv_, stream_);
    }
  }
  SQZ_RETURN_IF_ERROR(Linear(a, w.wqkv, w.bqkv, m, qkv_dim_, k, qkv_));
  // One launch rotates q and k in place and writes the rotated keys and the values to the pool.
  return cuda::RopeWritePagedKv<T>(qkv_, qkv_dim_, positions, slots, m, q_heads, kvh, d, inv_freq_,
                                   PoolK(layer), PoolV(layer), stream_);
}

template <typename T>
Status ForwardImpl<T>::GateUpSwiGlu(const T* a, const T* w_gate_up, int64_t m, int64_t cols,
                                    int64_t k, T* out) {
  if constexpr (std::is_same_v<T, bf16>) {
    // Few rows with the warp-per-row GEMV: one launch, the same bits as the two below.
    if (gemv_plan_.kernel == cuda::GemvKernel::kWarpPerRow &&
        cuda::GemvSupported(a, w_gate_up, m, k)) {
      return cuda::GemvSwiGlu(gemv_plan_, a, w_gate_up, m, cols, k, out, stream_);
    }
  }
  SQZ_RETURN_IF_ERROR(Linear(a, w_gate_up, nullptr, m, 2 * cols, k, gate_up_));
  return cuda::SwiGlu<T>(gate_up_, m, cols, out, stream_);
}

template <typename T>
Status ForwardImpl<T>::LmHead(const T* a, int64_t m, float* out) {
  if constexpr (std::is_same_v<T, float>) {
    return cuda::MatMulTransBF32(a, weights_->lm_head(), nullptr, m, c_.vocab, c_.hidden, out,
                                 stream_);
  } else {
    if (cuda::GemvSupported(a, weights_->lm_head(), m, c_.hidden)) {
      return cuda::Gemv<float>(gemv_plan_, a, weights_->lm_head(), nullptr, m, c_.vocab, c_.hidden,
                               out, stream_);
    }
    return gemm_->MatMulTransB<float>(a, weights_->lm_head(), nullptr, m, c_.vocab, c_.hidden, out,
                                      gemm_ws_, gemm_ws_bytes_, stream_);
  }
}

template <typename T>
Status ForwardImpl<T>::Attention(const StepLayout& L, int layer, int64_t decode_keys) {
  const int d = static_cast<int>(c_.head_dim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int32_t* block_ids = meta_ + L.off_block_ids;
  int64_t simple_rows = 0;  // rows [0, simple_rows) go to the reference kernel
  if constexpr (std::is_same_v<T, float>) {
    simple_rows = L.rows;
  } else {
    if (!DecodeKernelFits()) simple_rows = L.decode_items;
  }
  if (simple_rows > 0) {
    cuda::PagedAttentionParams<T> p;
    p.q = qkv_;
    p.q_stride = qkv_dim_;
    p.row_keys = meta_ + L.off_row_keys;
    p.row_table = meta_ + L.off_row_table;
    p.block_ids = block_ids;
    p.pool_k = PoolK(layer);
    p.pool_v = PoolV(layer);
    p.rows = simple_rows;
    p.q_heads = static_cast<int>(c_.q_heads);
    p.kv_heads = static_cast<int>(c_.kv_heads);
    p.head_dim = d;
    p.scale = scale;
    SQZ_RETURN_IF_ERROR(cuda::PagedAttentionSimple<T>(p, attn_, c_.q_dim(), stream_));
  }
  if constexpr (std::is_same_v<T, bf16>) {
    if (L.decode_items > 0 && simple_rows == 0) {
      cuda::DecodeAttentionParams p;
      p.batch = static_cast<int>(L.decode_items);
      p.n_q_heads = static_cast<int>(c_.q_heads);
      p.n_kv_heads = static_cast<int>(c_.kv_heads);
      p.head_dim = d;
      p.scale = scale;
      p.q = qkv_;
      p.q_stride = qkv_dim_;
      p.own_len = meta_ + L.off_own_len;
      p.block_indptr = meta_ + L.off_indptr;
      p.block_ids = block_ids;
      p.pool_k = PoolK(layer);
      p.pool_v = PoolV(layer);
      p.max_kv_len = decode_keys;
      // After QkvRope, which writes q and the newest keys (a step's last launch before this one).
      p.programmatic = programmatic_attention_;
      p.programmatic_after_qkv = true;
      // Fewer, longer chunks where the partials would not fit the workspace.
      const cuda::DecodePlan plan = cuda::PlanDecodeAttentionWithin(p, num_sms_, decode_ws_bytes_);
      SQZ_RETURN_IF_ERROR(cuda::DecodeAttention<bf16>(p, plan, attn_, nullptr, decode_ws_,
                                                      decode_ws_bytes_, stream_));
    }
    for (size_t i = L.decode_items; i < L.items.size(); ++i) {
      const StepLayout::Item& item = L.items[i];
      cuda::PrefillAttentionParams p;
      p.q = qkv_ + item.row0 * qkv_dim_;
      p.q_token_stride = qkv_dim_;
      if (item.cached == 0) {
        // A fresh sequence: its keys are exactly the step's rows, in place in qkv.
        p.k = qkv_ + item.row0 * qkv_dim_ + c_.q_dim();
        p.v = p.k + kv_dim_;
        p.kv_token_stride = qkv_dim_;
      } else {
        SQZ_RETURN_IF_ERROR(cuda::GatherPagedKv<T>(
            PoolK(layer), PoolV(layer), block_ids + item.table, item.cached + item.n,
            static_cast<int>(c_.kv_heads), d, kbuf_, vbuf_, stream_));
        p.k = kbuf_;
        p.v = vbuf_;
        p.kv_token_stride = kv_dim_;
      }
      p.kv_head_stride = d;
      p.n_q = item.n;
      p.n_kv = item.cached + item.n;
      p.n_q_heads = static_cast<int>(c_.q_heads);
      p.n_kv_heads = static_cast<int>(c_.kv_heads);
      p.head_dim = d;
      p.scale = scale;
      p.causal = true;
      p.q_offset = item.cached;
      SQZ_RETURN_IF_ERROR(cuda::PrefillAttention<bf16>(p, attn_ + item.row0 * c_.q_dim(),
                                                       c_.q_dim(), nullptr, stream_));
    }
  }
  return OkStatus();
}

template <typename T>
Status ForwardImpl<T>::CaptureQ(const StepLayout& L, int layer) {
  const int64_t q_dim = c_.q_dim();
  for (const StepLayout::Item& item : L.items) {
    if (item.q_out == nullptr) continue;
    host_stage_.resize(item.n * q_dim);
    SQZ_CUDA_RETURN_IF_ERROR(
        cudaMemcpy2DAsync(host_stage_.data(), q_dim * sizeof(T), qkv_ + item.row0 * qkv_dim_,
                          qkv_dim_ * sizeof(T), q_dim * sizeof(T), item.n, cudaMemcpyDeviceToHost,
                          stream_),
        "CudaBackend: q capture");
    SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "CudaBackend: q capture");
    float* dst = item.q_out + layer * item.n * q_dim;
    for (int64_t i = 0; i < item.n * q_dim; ++i) dst[i] = ToFloatHost(host_stage_[i]);
  }
  return OkStatus();
}

template <typename T>
Status ForwardImpl<T>::Body(const StepLayout& L, int64_t decode_keys, bool capture) {
  const int64_t R = L.rows, H = c_.hidden, I = c_.intermediate;
  const int kvh = static_cast<int>(c_.kv_heads), d = static_cast<int>(c_.head_dim);
  const int32_t* positions = meta_ + L.off_positions;
  SQZ_RETURN_IF_ERROR(
      cuda::EmbedToFloat<T>(meta_ + L.off_ids, weights_->embedding(), R, c_.vocab, H, x_, stream_));
  for (int layer = 0; layer < c_.layers; ++layer) {
    const CudaLayerWeights<T>& w = weights_->layer(layer);
    Status s = cuda::AddRmsNorm<T>(x_, layer == 0 ? nullptr : tmp_, w.attn_norm, R, H, c_.rms_eps,
                                   xn_, stream_);
    if (s.ok()) s = QkvRope(xn_, w, R, positions, meta_ + L.off_slots, layer);
    if (s.ok() && capture) s = CaptureQ(L, layer);
    if (s.ok() && ctx_active_) {
      typename ContextStep<T>::Buffers b;
      b.qkv = qkv_;
      b.qkv_dim = qkv_dim_;
      b.attn = attn_;
      b.meta = meta_;
      b.pool_k = PoolK(layer);
      b.pool_v = PoolV(layer);
      b.kbuf = kbuf_;
      b.vbuf = vbuf_;
      b.decode_ws = decode_ws_;
      b.decode_ws_bytes = decode_ws_bytes_;
      s = ctx_step_->Attention(L, layer, b);
    } else if (s.ok()) {
      s = Attention(L, layer, decode_keys);
    }
    if (s.ok()) {
      s = Linear(attn_, w.wo, nullptr, R, H, c_.q_dim(), tmp_,
                 streaming_o_proj_ ? &streaming_plan_ : &gemv_plan_);
    }
    if (s.ok()) s = cuda::AddRmsNorm<T>(x_, tmp_, w.ffn_norm, R, H, c_.rms_eps, xn_, stream_);
    if (s.ok()) s = GateUpSwiGlu(xn_, w.w_gate_up, R, I, H, act_);
    if (s.ok()) s = Linear(act_, w.w_down, nullptr, R, H, I, tmp_);
    if (!s.ok()) return Annotate(s, "CudaBackend: layer " + std::to_string(layer));
  }
  return Annotate(cuda::AddToFloat<T>(x_, tmp_, R * H, stream_), "CudaBackend");
}

template <typename T>
Status ForwardImpl<T>::Head(const StepLayout& L, int64_t r0, int64_t n) {
  SQZ_RETURN_IF_ERROR(
      Annotate(cuda::GatherRmsNorm<T>(x_, meta_ + L.off_logit_rows + r0, weights_->final_norm(), n,
                                      c_.hidden, c_.rms_eps, xn_, stream_),
               "CudaBackend: final norm"));
  return Annotate(LmHead(xn_, n, logits_), "CudaBackend: LM head");
}

template <typename T>
Status ForwardImpl<T>::RunGraph(const StepLayout& L, int64_t decode_keys, bool* ran) {
  *ran = false;
  // The layout's sizes and offsets; the plain path's key bucket, or the context step's signature
  // (its buffers, offsets and plan: a grown buffer or another mix of lookups is another graph).
  std::vector<int64_t> signature = {static_cast<int64_t>(L.items.size()), L.rows, L.out_rows,
                                    L.decode_items, ctx_active_ ? 1 : 0};
  for (int64_t off : {L.off_ids, L.off_positions, L.off_slots, L.off_row_keys, L.off_row_table,
                      L.off_logit_rows, L.off_own_len, L.off_indptr, L.off_block_ids}) {
    signature.push_back(off);
  }
  if (ctx_active_) {
    ctx_step_->GraphSignature(&signature);
  } else {
    signature.push_back(decode_keys);
  }
  auto it = graphs_.find(signature);
  if (it == graphs_.end()) {
    if (graphs_.size() >= kMaxGraphs) {
      auto lru = graphs_.begin();
      for (auto j = graphs_.begin(); j != graphs_.end(); ++j) {
        if (j->second.last_used < lru->second.last_used) lru = j;
      }
      graphs_.erase(lru);
    }
    it = graphs_.try_emplace(std::move(signature)).first;
  }
  DecodeGraph& g = it->second;
  g.last_used = ++graph_clock_;
  if (g.exec.get() == nullptr) {
    if (++g.seen < 2) return OkStatus();  // the first time runs eagerly
    SQZ_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed),
                             "CudaBackend: graph capture");
    Status s = Body(L, decode_keys, /*capture=*/false);
    if (s.ok()) s = Head(L, 0, L.out_rows);
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    if (s.ok()) s = cuda::CudaStatus(end, "CudaBackend: graph capture");
    cudaGraphExec_t exec = nullptr;
    if (s.ok()) {
      s = cuda::CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "CudaBackend: graph instantiate");
    }
    if (graph) cudaGraphDestroy(graph);
    if (!s.ok()) {
      // Run this and every later step eagerly (graph_stats says why); the step itself is fine.
      cudaGetLastError();
      graphs_on_ = false;
      graph_stats_.capture_error = s.ToString();
      return OkStatus();
    }
    g.exec.reset(exec);
    ++graph_stats_.captured;
  }
  SQZ_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(g.exec.get(), stream_), "CudaBackend: graph launch");
  ++graph_stats_.replays;
  *ran = true;
  return OkStatus();
}

template <typename T>
Status ForwardImpl<T>::Run(const StepLayout& L, std::span<const StepInput> batch,
                           std::span<const StepContext> contexts, float* logits,
                           std::span<const TokenSampling> sampling, int32_t* tokens) {
  ctx_active_ = !contexts.empty();
  if (ctx_active_) SQZ_RETURN_IF_ERROR(ctx_step_->Prepare(L, contexts));
  std::memcpy(pinned_.get(), L.ints.data(), L.ints.size() * 4);
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(meta_, pinned_.get(), L.ints.size() * 4, cudaMemcpyHostToDevice, stream_),
      "CudaBackend: step metadata");
  bool capture = false;
  for (const StepLayout::Item& item : L.items) capture = capture || item.q_out != nullptr;
  const bool want_rows = logits != nullptr || tokens != nullptr;
  // Whether one Head pass covers every logit row (then it may belong to the graph).
  const bool one_pass = want_rows && L.out_rows <= logit_rows_;
  const int64_t decode_keys = DecodeKeysBucket(L.max_decode_keys);
  bool graphed = false;
  // Decode steps with contexts too: their launches depend only on ContextStep's signature.
  if (graphs_on_ && one_pass && !capture &&
      L.decode_items == static_cast<int64_t>(L.items.size()) &&
      L.decode_items <= o_.graph_max_batch) {
    SQZ_RETURN_IF_ERROR(RunGraph(L, decode_keys, &graphed));
  }
  if (!graphed) {
    SQZ_RETURN_IF_ERROR(Body(L, decode_keys, capture));
    if (one_pass) SQZ_RETURN_IF_ERROR(Head(L, 0, L.out_rows));
  }
  if (want_rows) {
    for (int64_t r0 = 0; r0 < L.out_rows; r0 += logit_rows_) {
      const int64_t n = std::min(logit_rows_, L.out_rows - r0);
      if (!one_pass) SQZ_RETURN_IF_ERROR(Head(L, r0, n));
      if (tokens != nullptr) {
        SQZ_RETURN_IF_ERROR(Annotate(
            sampler_->Sample(logits_, n, c_.vocab, sampling.subspan(r0, n), tokens + r0, stream_),
            "CudaBackend"));
      } else {
        SQZ_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits + r0 * c_.vocab, logits_, n * c_.vocab * 4,
                                                 cudaMemcpyDeviceToHost, stream_),
                                 "CudaBackend: logits to host");
      }
    }
  }
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "CudaBackend: step");
  if (ctx_active_) ctx_step_->CountUsage(L);
  return OkStatus();
}

template <typename T>
Status ForwardImpl<T>::ReadKv(const std::vector<int32_t>& blocks, int layer, int64_t begin,
                              int64_t n, float* k, float* v) {
  if (n == 0) return OkStatus();
  const int64_t first_block = begin / kKvBlockTokens, skip = begin % kKvBlockTokens;
  const int64_t count = skip + n;
  const int64_t table = (count + kKvBlockTokens - 1) / kKvBlockTokens;
  std::memcpy(pinned_.get(), blocks.data() + first_block, table * 4);
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(meta_, pinned_.get(), table * 4, cudaMemcpyHostToDevice, stream_),
      "ReadKv: block table");
  SQZ_RETURN_IF_ERROR(
      Annotate(cuda::GatherPagedKv<T>(PoolK(layer), PoolV(layer), meta_, count,
                                      static_cast<int>(c_.kv_heads), static_cast<int>(c_.head_dim),
                                      kbuf_, vbuf_, stream_),
               "ReadKv"));
  host_stage_.resize(2 * n * kv_dim_);
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host_stage_.data(), kbuf_ + skip * kv_dim_, n * kv_dim_ * sizeof(T),
                      cudaMemcpyDeviceToHost, stream_),
      "ReadKv: keys");
  SQZ_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host_stage_.data() + n * kv_dim_, vbuf_ + skip * kv_dim_,
                      n * kv_dim_ * sizeof(T), cudaMemcpyDeviceToHost, stream_),
      "ReadKv: values");
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "ReadKv");
  for (int64_t i = 0; i < n * kv_dim_; ++i) {
    k[i] = ToFloatHost(host_stage_[i]);
    v[i] = ToFloatHost(host_stage_[n * kv_dim_ + i]);
  }
  return OkStatus();
}

}  // namespace

CudaBackend::CudaBackend(const ModelConfig& config, const CudaBackendOptions& options,
                         std::unique_ptr<Impl> impl)
    : config_(config),
      options_(options),
      sequences_(options.kv_blocks),
      contexts_(std::make_unique<DeviceContextCache>(options.context_budget_bytes,
                                                     options.dtype == CudaDType::kF32 ? 4 : 2)),
      impl_(std::move(impl)) {}

CudaBackend::~CudaBackend() {
  // Device contexts go before the stream they were used on.
  if (impl_) cudaStreamSynchronize(impl_->stream());
  contexts_.reset();
}

StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const Model& model,
                                                           const CudaBackendOptions& options) {
  SQZ_RETURN_IF_ERROR(model.config.Validate());
  SQZ_RETURN_IF_ERROR(model.weights.Validate(model.config));
  return CreateImpl(model.config, &model, options, 0);
}

StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::CreateRandom(const ModelConfig& config,
                                                                 const CudaBackendOptions& options,
                                                                 uint64_t seed) {
  SQZ_RETURN_IF_ERROR(config.Validate());
  return CreateImpl(config, nullptr, options, seed);
}

StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::CreateImpl(const ModelConfig& config,
                                                               const Model* model,
                                                               const CudaBackendOptions& options,
                                                               uint64_t seed) {
  if (options.kv_blocks < 1 || options.kv_blocks > (int64_t{1} << 27)) {
    return InvalidArgumentError("CudaBackendOptions.kv_blocks must be in [1, 2^27], got " +
                                std::to_string(options.kv_blocks));
  }
  if (options.max_step_tokens < 1 || options.max_step_tokens > 65535) {
    return InvalidArgumentError("CudaBackendOptions.max_step_tokens must be in [1, 65535], got " +
                                std::to_string(options.max_step_tokens));
  }
  if (options.max_logit_rows < 1) {
    return InvalidArgumentError("CudaBackendOptions.max_logit_rows must be >= 1, got " +
                                std::to_string(options.max_logit_rows));
  }
  if (options.decode_workspace_bytes < 4096) {
    return InvalidArgumentError("CudaBackendOptions.decode_workspace_bytes must be >= 4096, got " +
                                std::to_string(options.decode_workspace_bytes));
  }
  if (options.weights_budget_bytes < 0) {
    return InvalidArgumentError("CudaBackendOptions.weights_budget_bytes must be >= 0, got " +
                                std::to_string(options.weights_budget_bytes));
  }
  if (options.context_prefill_kv_splits < 0 || options.context_prefill_kv_splits > 65535) {
    return InvalidArgumentError(
        "CudaBackendOptions.context_prefill_kv_splits must be in [0, 65535], got " +
        std::to_string(options.context_prefill_kv_splits));
  }
  if (options.graph_max_batch < 1 || options.graph_max_batch > 256) {
    return InvalidArgumentError("CudaBackendOptions.graph_max_batch must be in [1, 256], got " +
                                std::to_string(options.graph_max_batch));
  }
  if (options.context_budget_bytes < 0) {
    return InvalidArgumentError("CudaBackendOptions.context_budget_bytes must be >= 0, got " +
                                std::to_string(options.context_budget_bytes));
  }
  if (options.max_penalty_tokens < 0 || options.max_penalty_tokens > INT32_MAX) {
    return InvalidArgumentError("CudaBackendOptions.max_penalty_tokens must be in [0, 2^31), got " +
                                std::to_string(options.max_penalty_tokens));
  }
  if (config.head_dim > 256) {
    return UnimplementedError("CudaBackend: head_dim " + std::to_string(config.head_dim) +
                              " is above the compiled maximum 256");
  }
  if (config.max_positions > INT32_MAX) {
    return InvalidArgumentError("CudaBackend: max_position_embeddings must be below 2^31");
  }
  int devices = 0;
  SQZ_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&devices), "CudaBackend: cudaGetDeviceCount");
  if (options.device < 0 || options.device >= devices) {
    return InvalidArgumentError("CudaBackendOptions.device " + std::to_string(options.device) +
                                " is not one of the " + std::to_string(devices) + " devices");
  }
  SQZ_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device), "CudaBackend: cudaSetDevice");
  std::unique_ptr<Impl> impl;
  if (options.dtype == CudaDType::kF32) {
    SQZ_ASSIGN_OR_RETURN(impl, ForwardImpl<float>::Create(config, model, options, seed));
  } else {
    SQZ_ASSIGN_OR_RETURN(impl, ForwardImpl<bf16>::Create(config, model, options, seed));
  }
  return std::unique_ptr<CudaBackend>(new CudaBackend(config, options, std::move(impl)));
}

StatusOr<SeqId> CudaBackend::AddSequence() { return sequences_.Add(); }

int64_t CudaBackend::SequenceLength(SeqId seq) const { return sequences_.Length(seq); }

KvPoolStats CudaBackend::Stats() const { return sequences_.Stats(); }

size_t CudaBackend::weight_bytes() const { return impl_->weight_bytes(); }

size_t CudaBackend::kv_pool_bytes() const { return impl_->kv_pool_bytes(); }

cudaStream_t CudaBackend::stream() const { return impl_->stream(); }

Status CudaBackend::ForwardSample(std::span<const StepInput> batch,
                                  std::span<const TokenSampling> sampling, int32_t* tokens) {
  if (sampling.size() != batch.size()) {
    return InvalidArgumentError("ForwardSample: " + std::to_string(sampling.size()) +
                                " sampling entries for a batch of " + std::to_string(batch.size()));
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].all_logits) {
      return InvalidArgumentError("ForwardSample: batch[" + std::to_string(i) +
                                  "].all_logits must be false (one token per sequence)");
    }
    SQZ_RETURN_IF_ERROR(DeviceSampler::Validate(sampling[i], i));
  }
  if (batch.empty()) return OkStatus();
  if (tokens == nullptr) return InvalidArgumentError("ForwardSample: null tokens");
  // Checked before any block is taken, so that the refusal leaves every sequence unchanged.
  const int64_t penalised = DeviceSampler::PenaltyTokensBound(sampling);
  if (penalised > options_.max_penalty_tokens) {
    return ResourceExhaustedError("ForwardSample: " + std::to_string(penalised) +
                                  " penalised tokens (prompt and generated, with repeats) exceed "
                                  "max_penalty_tokens " +
                                  std::to_string(options_.max_penalty_tokens));
  }
  return RunStep(batch, nullptr, sampling, tokens);
}

CudaBackend::GraphStats CudaBackend::graph_stats() const { return impl_->graph_stats(); }

void CudaBackend::set_cuda_graphs(bool on) { impl_->set_cuda_graphs(on); }
void CudaBackend::set_sparse_prefill(bool on) { impl_->set_sparse_prefill(on); }
void CudaBackend::set_group_context_lookups(bool on) { impl_->set_group_context_lookups(on); }
void CudaBackend::set_context_prefill_kv_splits(int splits) {
  SQZ_CHECK_GE(splits, 0);
  impl_->set_context_prefill_kv_splits(splits);
}

void CudaBackend::set_streaming_gemv(bool on) { impl_->set_streaming_gemv(on); }
void CudaBackend::set_programmatic_launch(bool on) { impl_->set_programmatic_launch(on); }
void CudaBackend::set_programmatic_attention(bool on) { impl_->set_programmatic_attention(on); }
void CudaBackend::set_streaming_o_proj(bool on) { impl_->set_streaming_o_proj(on); }

Status CudaBackend::ReadKv(SeqId seq, int layer, int64_t begin, int64_t n, float* k, float* v) {
  const std::vector<int32_t>* blocks = sequences_.Blocks(seq);
  if (blocks == nullptr) return NotFoundError("ReadKv: unknown sequence " + std::to_string(seq));
  if (layer < 0 || layer >= config_.layers) {
    return InvalidArgumentError("ReadKv: layer " + std::to_string(layer) + " outside [0, " +
                                std::to_string(config_.layers) + ")");
  }
  const int64_t length = sequences_.Length(seq);
  if (begin < 0 || n < 0 || begin + n > length) {
    return OutOfRangeError("ReadKv: tokens [" + std::to_string(begin) + ", " +
                           std::to_string(begin + n) + ") outside the " + std::to_string(length) +
                           " cached tokens of sequence " + std::to_string(seq));
  }
  return impl_->ReadKv(*blocks, layer, begin, n, k, v);
}

}  // namespace sqz
