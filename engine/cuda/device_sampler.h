// DeviceSampler: picks one token per row of device-resident fp32 logits (the CUDA backend's LM-head
// output), so a decode step copies token ids to the host instead of [rows][vocab] logits.
//
// Per row, in this order (Sampler's pipeline, sampler.h):
//   1. penalties, in place on the logits: the repetition penalty over the distinct prompt and
//      generated tokens (x / rp if x > 0, else x * rp), then presence + frequency * count over the
//      distinct generated tokens, with the same fp32 operations as Sampler (so greedy picks are
//      identical to Sampler's on the same logits);
//   2. temperature 0: the argmax (ties: the lowest id), as Sampler; otherwise a seeded draw with
//      top-k / top-p / min-p as kernels/cuda/sampling.h defines it (Philox on (seed, counter):
//      reproducible and independent of the batch, but not Sampler's random stream).
// Tokens of prompt/generated outside [0, vocab) are ignored, as Sampler does.
//
// Memory: every device and pinned buffer is allocated in Create (sized for max_rows rows and
// max_penalty_tokens distinct penalised tokens per call); Sample allocates no device memory.
// Ownership: owns its buffers; borrows the logits and the caller's token spans for the call.
// Thread safety: not thread-safe (one engine thread).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/status.h"
#include "engine/cuda/device_memory.h"
#include "engine/model/backend.h"

namespace sqz {

class DeviceSampler {
 public:
  // INVALID_ARGUMENT for max_rows < 1, vocab < 1 or max_penalty_tokens < 0; RESOURCE_EXHAUSTED when
  // the buffers do not fit (the sampling workspace is max_rows * vocab * 4 bytes).
  static StatusOr<std::unique_ptr<DeviceSampler>> Create(int64_t max_rows, int64_t vocab,
                                                         int64_t max_penalty_tokens);

  DeviceSampler(const DeviceSampler&) = delete;
  DeviceSampler& operator=(const DeviceSampler&) = delete;

  // OK when `s` lies in SamplingParams' ranges, else INVALID_ARGUMENT "sampling[row].field must
  // be ..., got ...".
  static Status Validate(const TokenSampling& s, size_t row);
  // An upper bound of the penalty entries `rows` need (their prompt tokens where the repetition
  // penalty is on, plus their generated tokens where any penalty is on; duplicates counted).
  static int64_t PenaltyTokensBound(std::span<const TokenSampling> rows);

  // Validates every row's parameters (SamplingParams' ranges; INVALID_ARGUMENT naming the row and
  // the field) before touching the device. logits: device [rows][row_stride] fp32, row_stride >=
  // vocab, modified in place where a penalty applies; rows == sampling.size() <= max_rows.
  // Enqueues on `stream`, synchronises it and writes tokens[rows] (host).
  // RESOURCE_EXHAUSTED when the rows' distinct penalised tokens exceed max_penalty_tokens.
  Status Sample(float* logits, int64_t rows, int64_t row_stride,
                std::span<const TokenSampling> sampling, int32_t* tokens, cudaStream_t stream);

  int64_t max_rows() const { return max_rows_; }
  int64_t vocab() const { return vocab_; }

 private:
  DeviceSampler(int64_t max_rows, int64_t vocab, int64_t max_penalty_tokens);

  // Byte offsets of the parameter block (the same layout on the device and in pinned memory):
  // temperature f32 [R], top_k i32 [R], top_p f32 [R], min_p f32 [R], seed u64 [R], counter u64
  // [R], penalties f32 [R][3] (rp, presence, frequency), indptr i32 [R + 1], ids i32 [R], then the
  // penalty entries i32 [max_penalty_tokens][2] (token, generated count).
  struct Layout {
    size_t temperature, top_k, top_p, min_p, seed, counter, penalties, indptr, ids, entries, bytes;
  };

  const int64_t max_rows_, vocab_, max_penalty_tokens_;
  Layout layout_{};
  DeviceMemory params_;            // the parameter block
  DeviceMemory workspace_;         // [max_rows][vocab] fp32 for the sampling kernel
  PinnedMemory staging_;           // the parameter block, host side
  std::vector<int32_t> count_of_;  // [vocab] -1 or the generated count of a penalised token
  std::vector<int32_t> touched_;   // tokens whose count_of_ entry is set (reset after each row)
};

}  // namespace sqz
