// Options of the engine, filled by config/ from the YAML file and flags (defaults here are the
// documented defaults). Plain data; validated once by config/ at start.
#pragma once

#include <cstdint>
#include <string>

namespace sqz {

// Options of the cuda backend (engine/cuda/cuda_backend.h, CudaBackendOptions); ignored by cpu.
// Its KV pool is sized by engine.memory.kv_pool_mb (2 bytes per element in bf16, 4 in fp32).
struct CudaOptions {
  // Element type of weights, activations and KV pool: "bf16" (serving) or "fp32" (exactness
  // checks: twice the memory, slow reference kernels).
  std::string dtype = "bf16";
  // CUDA device ordinal.
  int64_t device = 0;
  // Upper bound on the weights' device memory, MiB; 0 = no bound. A model above it fails at load
  // with RESOURCE_EXHAUSTED instead of crowding out the KV pool.
  int64_t weights_mb = 0;
  // Split-K workspace of decode attention, MiB. Less forces longer chunks (less parallelism) on
  // long contexts at large batches.
  int64_t workspace_mb = 64;
  // Tokens one engine step may carry on the GPU: sizes the activation buffers (about
  // max_step_tokens x (hidden + 3 x intermediate) elements). Must be >= engine.scheduler.
  // max_batch_tokens.
  int64_t max_step_tokens = 4096;
  // CUDA graphs for decode steps of up to graph_max_batch requests: fewer launch gaps per token,
  // a little memory per captured shape; results are the same with graphs off.
  bool graphs = true;
  int64_t graph_max_batch = 16;
  // GPU memory for resident fixed contexts (their K/V and centroid index), MiB. A context needs
  // about layers x kv_heads x tokens x head_dim x 4 bytes in bf16 (128 KiB per token for a
  // Llama-3-8B shape: 16 GiB at 128K tokens); contexts beyond it are evicted least recently used
  // when no request runs over them, and a context larger than all of it is refused.
  int64_t context_mb = 8192;
};

struct ModelOptions {
  // Hugging Face directory or .gguf file. Default: the embedded default model in the model cache.
  std::string path = "~/.cache/squeeze/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  // "cpu" (reference, any machine) or "cuda" (needs an NVIDIA GPU and a CUDA build).
  std::string backend = "cpu";
  // CPU threads for the cpu backend; 0 = all cores.
  int64_t threads = 0;
  CudaOptions cuda;
};

struct MemoryOptions {
  // Memory for the paged KV pool of requests' own tokens (prompt + generated), MiB.
  // Larger admits more concurrent requests; each token costs 2 x layers x kv_heads x head_dim x 4 B
  // on the cpu backend.
  int64_t kv_pool_mb = 512;
  // Memory for resident fixed contexts (KV + index), MiB. Contexts beyond it are evicted (LRU,
  // unpinned, idle) and loaded again from storage on use.
  int64_t resident_contexts_mb = 2048;
};

struct SchedulerOptions {
  // Tokens one engine step may process (decode tokens + prefill chunk tokens). Trade-off: larger
  // raises prefill throughput, smaller lowers inter-token latency of running requests.
  int64_t max_batch_tokens = 512;
  // Requests decoding at once at most.
  int64_t max_running = 64;
  // Requests waiting for admission at most; beyond it Generate answers RESOURCE_EXHAUSTED.
  int64_t max_queue = 256;
  // Context tokens one ingestion step may prefill, interleaved at low priority with queries.
  int64_t ingest_chunk_tokens = 256;
};

// Server-wide defaults of Squeezed Attention; requests and registrations may override them.
struct SqueezeDefaults {
  int64_t sink_tokens = 4;
  int64_t observation_window = 100;
  double centroid_fraction = 0.05;
  double coarse_fraction = 0.01;  // <= 0 disables the coarse level
  int64_t kmeans_iterations = 20;
  uint64_t kmeans_seed = 1234;
  std::string default_mode = "squeezed";  // "squeezed" | "dense"
  std::string default_policy = "budget";  // "budget" | "threshold"
  double default_kv_budget = 0.125;
  double default_sparsity = 0.7;
  std::string gqa_reduce = "max";  // "max" | "mean"
  int64_t prefill_block_size = 64;
  bool hierarchical = false;
};

struct EngineOptions {
  ModelOptions model;
  MemoryOptions memory;
  SchedulerOptions scheduler;
  SqueezeDefaults squeeze;
};

}  // namespace sqz
