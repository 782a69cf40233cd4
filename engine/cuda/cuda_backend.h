// CudaBackend: the decoder forward pass on one GPU, behind the Backend interface (backend.h).
//
// Numerics: weights, activations and the paged KV pool in bf16 (serving) or fp32 (the exactness
// mode); the residual stream is fp32 in both; every sum accumulates in fp32.
//   bf16: cuBLASLt GEMMs (fused qkv and gate_up), tensor-core prefill attention (a prefill chunk
//         attends to its sequence's KV gathered out of the pool) and split-K decode attention over
//         the paged pool (kernels/cuda), logits in fp32.
//   fp32: reference-grade kernels (deterministic fp32 matrix product, one warp per (token, head)
//         paged attention): slow, but every row's result is independent of the batch and of the
//         chunking, as on the CPU backend.
// Forward pass per layer: AddRmsNorm -> qkv GEMM (+bias) -> RoPE (llama3/linear scaling through
// inv_freq) -> K/V into the pool -> attention -> o GEMM -> AddRmsNorm -> gate_up GEMM -> SwiGLU
// -> down GEMM; then the final RMSNorm of the logit rows and the LM head. At <= 8 rows in bf16
// (decode) the GEMMs are GEMVs (kernels/cuda/gemv.h), the qkv one with RoPE and the K/V write in
// its epilogue and the gate_up one with SwiGLU (one launch each, the same bits as the separate
// kernels), and the dense decode attention starts loading keys before the qkv kernel is done
// (programmatic_attention).
//
// Fixed contexts (StepInput::context, a SnapshotAttention from engine/squeeze
// MakeContextAttention): the backend keeps a device copy of each context's snapshot
// (device_context.h: rows sink | body in cluster order | window, bf16 in bf16 mode and fp32 in the
// fp32 mode, centroids bf16), uploaded on the first step that uses it, shared by every sequence
// over it, reference counted by live sequences and evicted least recently used among unused copies
// within context_budget_bytes. Per step and layer (context_step.h): SQUEEZED decode items run the
// GPU lookup (SqueezeSelect, batched over requests) and sparse DecodeAttention over their segments;
// DENSE items attend to every context row; own tokens always come from the paged pool; a prefill
// chunk attends densely to its context, merged exactly with its causal own-token attention.
// Positions of own tokens start at the context length (RoPE), as on the CPU backend.
//
// Deviations from the Backend guarantees (backend.h):
//   * fixed contexts: SQUEEZED prefill (a step of several new tokens) selects per block of 64
//     tokens as the CPU does (CudaBackendOptions::sparse_prefill, on by default) in bf16 with flat
//     lookups; in fp32, with hierarchical lookups or with the option off it attends to the whole
//     context, like DENSE; SQUEEZED needs head_dim 64 or 128 and GQA groups <= 8
//     (else UNIMPLEMENTED: ask for DENSE); the lookup reads bf16 queries and centroids (also in the
//     fp32 mode), so near-ties may select other clusters than the CPU; a context longer than the
//     whole budget, or one that does not fit beside the contexts of running sequences, is
//     RESOURCE_EXHAUSTED. The share of context keys read (KeyUsage of the ContextAttention) is
//     counted on the device; for hierarchical lookups it counts every coarse and fine centroid
//     scored, an upper bound of what the CPU counts;
//   * batch invariance in bf16: a request's logits DO depend on the batch it runs in, at the
//     level of bf16 rounding, not bit for bit. Three causes: (1) the linear layers run a GEMV for
//     steps of at most 8 rows and cuBLASLt above, and cuBLASLt picks its algorithm (tile shape,
//     split-K) by the row count, so the sum order of a row changes with the step's size; (2) the
//     split of decode attention (chunks per sequence) is planned from the batch size and the
//     longest sequence of the step; (3) a prefill chunk's attention sums in another order than
//     decode attention, so chunking changes results too. What holds (tested on the GPU by
//     cuda_backend_graph_test): the same step shape gives bit-identical results (every kernel
//     is deterministic; CUDA graphs change nothing), and a request's logits alone and in mixed
//     batches of 1-20 sequences agree within 1e-2 relative L2. Measured on the H200
//     (docs/benchmarks/cuda.md): bit-identical beside 2 other requests (the decode steps of 3
//     rows stay on the GEMV, whose rows are independent, the attention split did not change, and
//     cuBLASLt chose alike for the 300- and 339-row prefill), 4.9e-3 beside 8 or 19 (cuBLASLt
//     at 9+ rows). Greedy decoding can therefore diverge between batch
//     compositions at near-ties of the top two logits. The fp32 mode is bit-for-bit batch and
//     chunk invariant.
//
// Memory: everything is allocated in Create (weights, KV pool, per-step buffers for up to
// max_step_tokens tokens, workspaces, pinned staging); Forward, ReadKv and the sequence calls
// allocate no device memory (the first capture of a decode shape's CUDA graph takes driver memory
// for the graph once; replays take none). A step with more than max_step_tokens tokens is
// INVALID_ARGUMENT.
// Ownership: owns its device memory, CUDA stream and cuBLASLt handle; Create borrows the Model
// only while copying it (the backend keeps a copy of its config, not the Model).
// Thread safety: not thread-safe (see Backend); use from one thread. Forward synchronises its
// stream before returning.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/cuda/context_step.h"
#include "engine/cuda/device_context.h"
#include "engine/cuda/paged_sequences.h"
#include "engine/model/backend.h"
#include "engine/model/weights.h"

namespace sqz {

enum class CudaDType { kBf16, kF32 };

struct CudaBackendOptions {
  // Weights, activations and KV pool element type. kF32 is for exactness checks (slow kernels).
  CudaDType dtype = CudaDType::kBf16;
  // Capacity of the paged KV pool in blocks of kKvBlockTokens (16) tokens, shared by all
  // sequences. Device memory: kv_blocks * 16 * layers * kv_heads * head_dim * 2 * sizeof(dtype).
  // Default 4096 blocks = 65536 tokens (8 GiB for a Llama-3-8B shape in bf16).
  int64_t kv_blocks = 4096;
  // Tokens one Forward step may carry (sizes the per-step activation buffers). Larger admits
  // bigger prefill chunks at the cost of memory (~ max_step_tokens * (hidden + 3 intermediate)
  // elements).
  int64_t max_step_tokens = 4096;
  // Logit rows computed per LM-head pass (more rows run in several passes); sizes the fp32 logits
  // buffer [max_logit_rows][vocab]. Clamped to max_step_tokens.
  int64_t max_logit_rows = 256;
  // Split-K workspace of decode attention; a step whose plan needs more uses longer chunks.
  int64_t decode_workspace_bytes = 64 << 20;
  // Upper bound on the device bytes of the weights (parameters x element size); 0: no bound.
  // Create fails with RESOURCE_EXHAUSTED naming both numbers when the model needs more.
  int64_t weights_budget_bytes = 0;
  // CUDA graphs for decode steps: a step whose items all carry one new token (no q capture, logits
  // or tokens wanted, at most graph_max_batch sequences) replays a graph captured the second time
  // its shape is seen. The shape is (batch size, decode-key bucket); buckets are 8 per power of two
  // of the longest sequence's key count, so a growing sequence meets a new graph every ~12% of its
  // length. Steps with fixed contexts (DENSE and SQUEEZED) are graphed too, their shape also
  // covering the mix of lookups and the context step's buffers (context_step.h). Graphs replay the
  // very kernels and parameters of the eager path: results are bit-identical with graphs on or off.
  // Off: every step is launched kernel by kernel.
  bool cuda_graphs = true;
  int64_t graph_max_batch = 16;  // in [1, 256]: graphs of larger batches gain little
  // Device bytes all resident fixed contexts may hold together (K/V + index). A context needs
  // about layers * kv_heads * tokens * head_dim * 2 * element size (Llama-3-8B shape, bf16: 128 KiB
  // per token, 16 GiB per 128K tokens) plus ~3% for the index. More keeps more contexts resident
  // (fewer uploads); it is memory the KV pool and weights cannot use.
  int64_t context_budget_bytes = int64_t{8} << 30;
  // SQUEEZED requests prefill their own prompt sparsely, one selection per block of query tokens
  // as the CPU backend does (context_prefill.h; bf16 and flat lookups). Off: their prefill reads
  // every context row (as DENSE), so only their decode steps are squeezed. Measured on the H200
  // (bench/cuda_e2e, 8B shape, 128K context, budget 0.125): a 256-token prompt in 38 ms instead
  // of 69 dense (with context_prefill_kv_splits), 1,024 tokens in 104 instead of 259.
  bool sparse_prefill = true;
  // Key splits of the dense context part of a prompt prefill (the prompt's non-causal attention to
  // every context row, kernels/cuda/prefill_attention.h): 0 (the default) lets
  // cuda::PlanPrefillAttention split the context keys into ranges when the prompt's query tiles x
  // heads alone would leave SMs idle (a short prompt over a long context: e.g. 4 splits for 129-256
  // tokens at 32 heads), with a merge of the ranges' partials after; 1 never splits (the single
  // launch, the fallback); n > 1 forces n splits (tests). Splits cost a workspace of
  // splits x prompt tokens x q_heads x head_dim fp32 (~16 MiB for 256 tokens of Llama-3-8B).
  int context_prefill_kv_splits = 0;
  // SQUEEZED decode requests of a step over the same resident context are scored together, in any
  // order (a lookup class's requests are ordered by context first; kernels/cuda/squeeze_select.h,
  // "Shared contexts": the context's centroids read once per group instead of once per request;
  // bit-identical selections; flat lookups).
  // Measured on the H200 (bench/cuda_e2e, 8B shape, 128K context, budget 0.125, all requests on
  // one context): a decode step at batch 32 in 26.2 ms instead of 30.4 (3.69x dense instead of
  // 3.19x), batch 8 16.2 instead of 17.3. Off: one lookup per request (the comparison row).
  bool group_context_lookups = true;
  // bf16 linear layers at <= 8 rows (decode) run kernels/cuda/gemv's streaming kernel: one wave
  // of persistent blocks (a programmatic dependent of the kernel before it with
  // programmatic_launch). Off (the default): the warp-per-feature kernel. The two sum in the same
  // order (same bits) for n >= 16384 and differ at the level of bf16 rounding below. Measured on
  // the H200 (docs/benchmarks/cuda.md, Llama-3-8B shapes): the streaming kernel is 1.1-1.4x faster
  // at 3-8 rows but slower at 1-2 (a whole batch-1 step 6.83 against 6.56 ms), so it stays opt-in
  // until a per-row-count choice is measured for batch invariance.
  bool streaming_gemv = false;
  // bf16 linear layers at <= 8 rows (decode): the GEMV is launched as a programmatic dependent
  // (PDL) of the kernel before it, whose data it waits for after issuing its first weight loads.
  // The same bits as plain launches. Measured on the H200 (docs/benchmarks/cuda.md, runs I-J, 8B
  // shape, batch 1 over 32K, graphs): 6.63-6.66 ms per step against 6.70 plain; PDL of the norms,
  // RoPE + KV write, SwiGLU and attention as well (the kernels support it) made the step slower
  // (6.79-6.81 ms), so the backend launches only the GEMVs so. The backend tests pass with it on
  // the GPU (cuda_backend_graph_test compares it with plain launches bit for bit). Off: plain
  // launches.
  bool programmatic_launch = true;
  // The dense decode attention (requests without a registered context) launched as a programmatic
  // dependent of the QKV + RoPE kernel before it: its first tile of older keys is loaded before it
  // waits, q after (DecodeAttentionParams::programmatic_after_qkv). The same bits either way
  // (cuda_backend_graph_test). Measured on the H200 (docs/benchmarks/cuda.md, 8B shape, batch 1
  // over 32K, graphs): 5.807-5.834 ms per step against 5.904-5.910 without.
  bool programmatic_attention = true;
  // The attention's output projection at <= 8 rows by the streaming GEMV whatever streaming_gemv
  // says (a short product: hidden x q_dim weights, where one wave of persistent blocks beats the
  // warp-per-row kernel's two). Sums in another order than the warp-per-row kernel below n = 16384
  // (bf16-rounding-level differences), still batch invariant. Measured on the H200
  // (docs/benchmarks/cuda.md, 8B shape, batch 1 over 32K, graphs): 5.73-5.75 ms per step against
  // 5.82-5.84 (the down projection so: 0.12 ms slower; the LM head: no change).
  bool streaming_o_proj = true;
  // Distinct penalised tokens (repetition / presence / frequency) one ForwardSample step may carry
  // over all its sequences: a device buffer of 8 bytes each.
  int64_t max_penalty_tokens = 1 << 20;
  int device = 0;  // CUDA device ordinal
};

class CudaBackend : public Backend {
 public:
  // Uploads `model` (converted to options.dtype). INVALID_ARGUMENT for a config or weights that
  // do not validate, or bad options; UNIMPLEMENTED for head_dim > 256; RESOURCE_EXHAUSTED when the
  // device memory does not suffice (the message gives the bytes asked for); INTERNAL for CUDA
  // failures (no device, no driver).
  static StatusOr<std::unique_ptr<CudaBackend>> Create(const Model& model,
                                                       const CudaBackendOptions& options);
  // Benchmark mode: random weights of `config` made directly on the GPU (no host copy, no files);
  // reproducible for a seed. Errors as Create.
  static StatusOr<std::unique_ptr<CudaBackend>> CreateRandom(const ModelConfig& config,
                                                             const CudaBackendOptions& options,
                                                             uint64_t seed);

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;
  ~CudaBackend() override;

  const ModelConfig& config() const override { return config_; }
  StatusOr<SeqId> AddSequence() override;
  Status FreeSequence(SeqId seq) override;
  int64_t SequenceLength(SeqId seq) const override;
  // See Backend::Forward; also INVALID_ARGUMENT for more than max_step_tokens tokens or a context
  // whose snapshot does not match the model, UNIMPLEMENTED for a context without a snapshot or a
  // SQUEEZED one on a model shape the lookup lacks, RESOURCE_EXHAUSTED when a context's device copy
  // does not fit context_budget_bytes. INTERNAL when a kernel fails (the step's sequences keep
  // their lengths).
  Status Forward(std::span<const StepInput> batch, float* logits) override;
  // Samples on the device (DeviceSampler): only the chosen token ids reach the host.
  bool SamplesInBackend() const override { return true; }
  Status ForwardSample(std::span<const StepInput> batch, std::span<const TokenSampling> sampling,
                       int32_t* tokens) override;
  Status ReadKv(SeqId seq, int layer, int64_t begin, int64_t n, float* k, float* v) override;
  KvPoolStats Stats() const override;

  struct GraphStats {
    int64_t captured = 0;       // graphs captured (one per decode shape seen twice)
    int64_t replays = 0;        // steps run by replaying a graph
    std::string capture_error;  // why capture failed (graphs are then off for good), or ""
  };
  GraphStats graph_stats() const;
  // Turns decode-step graphs on or off from the next step on (benchmarks compare both on one
  // backend); starts as options.cuda_graphs.
  void set_cuda_graphs(bool on);
  // The same for options.sparse_prefill (bf16 backends; fp32 ones prefill densely either way).
  void set_sparse_prefill(bool on);
  // The same for options.context_prefill_kv_splits (>= 0).
  void set_context_prefill_kv_splits(int splits);
  // The same for options.group_context_lookups.
  void set_group_context_lookups(bool on);
  // Switches the linear layers' GEMV (options.streaming_gemv) from the next step on; drops the
  // captured graphs, which hold the kernels. Benchmarks compare both on one backend.
  void set_streaming_gemv(bool on);
  // The same for options.programmatic_launch (drops the captured graphs too).
  void set_programmatic_launch(bool on);
  // The same for options.programmatic_attention.
  void set_programmatic_attention(bool on);
  // The same for options.streaming_o_proj.
  void set_streaming_o_proj(bool on);

  // Makes `context` (filled on the device, e.g. by IngestContext: bench/cuda_e2e) the resident copy
  // of `snapshot`, which then serves requests whose ContextAttention borrows `snapshot` (its dims
  // and thresholds are read; its heads may be empty). The element type must be the backend's.
  // Errors: INVALID_ARGUMENT (resident already, shape mismatch), RESOURCE_EXHAUSTED (budget).
  Status InstallContext(const ContextSnapshot& snapshot, std::unique_ptr<DeviceContext> context);
  // Copies own tokens [begin, begin + n) of `seq` at `layer` device to device: k, v are device
  // buffers [n][kv_heads][head_dim] of the backend's element type (bf16, or fp32 in the fp32
  // mode); begin must be a multiple of 16 (kKvBlockTokens). For ingestion on the device (a dense
  // prefill, then IngestContext on the captured K/V). Errors as ReadKv. Synchronises the stream.
  Status CopyKvToDevice(SeqId seq, int layer, int64_t begin, int64_t n, void* k, void* v);
  // Drops the device copy of `snapshot` now: NOT_FOUND if absent, FAILED_PRECONDITION while live
  // sequences use it. (Copies are otherwise evicted only to make room.)
  Status EvictContext(const ContextSnapshot& snapshot);
  DeviceContextCache::Stats context_stats() const;

  // Device bytes of the weights and of the KV pool (K and V, all layers).
  size_t weight_bytes() const;
  size_t kv_pool_bytes() const;
  // The stream all work is enqueued on (benchmarks time with events on it).
  cudaStream_t stream() const;

  class Impl;  // the dtype-specific device state (cuda_backend.cc)

 private:
  CudaBackend(const ModelConfig& config, const CudaBackendOptions& options,
              std::unique_ptr<Impl> impl);
  static StatusOr<std::unique_ptr<CudaBackend>> CreateImpl(const ModelConfig& config,
                                                           const Model* model,
                                                           const CudaBackendOptions& options,
                                                           uint64_t seed);

  // Describes and makes resident the contexts of `batch` (by_batch_), holding a step reference on
  // each; *any says whether there is one.
  Status PrepareContexts(std::span<const StepInput> batch, bool* any);
  void ReleaseStepContexts();
  // Forward and ForwardSample after their own checks.
  Status RunStep(std::span<const StepInput> batch, float* logits,
                 std::span<const TokenSampling> sampling, int32_t* tokens);

  const ModelConfig config_;
  const CudaBackendOptions options_;
  PagedSequences sequences_;
  StepLayout layout_;  // reused between steps
  std::unique_ptr<DeviceContextCache> contexts_;
  // The context each live sequence is bound to (one reference each in contexts_).
  std::unordered_map<SeqId, const ContextSnapshot*> seq_context_;
  std::vector<StepContext> by_batch_;       // the current step's contexts, batch order
  std::vector<StepContext> step_contexts_;  // ... in layout order (empty: no context)
  std::vector<const ContextSnapshot*> step_refs_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sqz
