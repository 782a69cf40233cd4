// Token selection on the device: greedy argmax, and seeded sampling with temperature, top-k,
// top-p and min-p. One block per row; rows are independent, so a request draws the same token
// alone or in any batch (given the same logits, seed and counter).
//
// Sampling definition (the test's host reference implements the same):
//   p_i = expf((logits_i - max logits) / temperature) in fp32 (the top token has p = 1);
//   weights w_i = floor(p_i * 2^32) as integers (sums are exact and deterministic);
//   kept = {i : p_i >= t} where t is the largest of
//     - top-k (0 < top_k < vocab): the top_k-th largest p (every token tied with it is kept),
//     - top-p (0 < top_p < 1): the largest p such that the w-mass of kept-by-top-k tokens with
//       p_i >= t is at least ceil(top_p * their total mass),
//     - min-p (0 < min_p <= 1): min_p (relative to the top token's p = 1);
//   u = PhiloxUniform(seed, counter) (philox.h); target = floor(u * W) with W the kept mass; the
//   token is the smallest index i whose running kept mass (in index order) exceeds target.
// temperature <= 0 (or NaN) means greedy: the argmax, ties to the lowest index. NaN logits are
// never chosen unless all are NaN (then token 0).
//
// Memory: caller-owned device memory. Thread safety: stateless.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/status.h"

namespace sqz::cuda {

// Per-request parameters, device arrays of [batch] each.
struct SamplingParams {
  const float* temperature = nullptr;  // <= 0: greedy
  const int32_t* top_k = nullptr;      // <= 0 or >= vocab: off
  const float* top_p = nullptr;        // >= 1 (or <= 0): off
  const float* min_p = nullptr;        // <= 0: off; values above 1 act as 1
  const uint64_t* seed = nullptr;      // the request's seed
  const uint64_t* counter = nullptr;   // draw number within the request (e.g. tokens so far)
};

// ids[r] = argmax_i logits[r * row_stride + i], i < vocab. logits: [batch][row_stride] (T float or
// __nv_bfloat16), ids: [batch] int32.
template <typename T>
Status ArgMax(const T* logits, int64_t batch, int64_t vocab, int64_t row_stride, int32_t* ids,
              cudaStream_t stream);

// Workspace the sampler needs: [batch][vocab] fp32.
size_t SamplingWorkspaceBytes(int64_t batch, int64_t vocab);

// ids[r] = a token drawn from row r as defined above. logits: [batch][row_stride], ids: [batch],
// workspace: >= SamplingWorkspaceBytes(batch, vocab) bytes, 4-byte aligned.
template <typename T>
Status Sample(const T* logits, int64_t batch, int64_t vocab, int64_t row_stride,
              const SamplingParams& params, int32_t* ids, void* workspace, size_t workspace_bytes,
              cudaStream_t stream);

}  // namespace sqz::cuda
