#include <cmath>
#include <cstring>
#include <string>

#include "engine/cuda/device_sampler.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/sampling.h"

namespace sqz {
namespace {

constexpr int kPenaltyThreads = 256;

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// One block per row; each thread rewrites distinct tokens (entries of a row are distinct), so no
// two threads touch one logit. The fp32 operations are Sampler's, un-contracted.
__global__ void ApplyPenaltiesKernel(float* logits, int64_t row_stride, const int32_t* indptr,
                                     const int2* entries, const float* penalties) {
  const int row = blockIdx.x;
  const float rp = penalties[3 * row], presence = penalties[3 * row + 1],
              frequency = penalties[3 * row + 2];
  float* x = logits + static_cast<int64_t>(row) * row_stride;
  for (int e = indptr[row] + threadIdx.x; e < indptr[row + 1]; e += blockDim.x) {
    const int2 entry = entries[e];
    float v = x[entry.x];
    if (rp != 1.0f) v = v > 0.0f ? __fdiv_rn(v, rp) : __fmul_rn(v, rp);
    if (entry.y > 0 && (presence != 0.0f || frequency != 0.0f)) {
      v = __fsub_rn(v, __fadd_rn(presence, __fmul_rn(frequency, static_cast<float>(entry.y))));
    }
    x[entry.x] = v;
  }
}

std::string Num(double v) {
  std::string s = std::to_string(v);
  return s;
}

}  // namespace

Status DeviceSampler::Validate(const TokenSampling& s, size_t row) {
  const std::string where = "sampling[" + std::to_string(row) + "].";
  if (!(s.temperature >= 0.0f) || !std::isfinite(s.temperature)) {
    return InvalidArgumentError(where + "temperature must be >= 0, got " + Num(s.temperature));
  }
  if (s.top_k < 0) {
    return InvalidArgumentError(where + "top_k must be >= 0, got " + std::to_string(s.top_k));
  }
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) {
    return InvalidArgumentError(where + "top_p must be in (0, 1], got " + Num(s.top_p));
  }
  if (!(s.min_p >= 0.0f && s.min_p <= 1.0f)) {
    return InvalidArgumentError(where + "min_p must be in [0, 1], got " + Num(s.min_p));
  }
  if (!(s.repetition_penalty > 0.0f) || !std::isfinite(s.repetition_penalty)) {
    return InvalidArgumentError(where + "repetition_penalty must be > 0, got " +
                                Num(s.repetition_penalty));
  }
  if (!(s.presence_penalty >= -2.0f && s.presence_penalty <= 2.0f)) {
    return InvalidArgumentError(where + "presence_penalty must be in [-2, 2], got " +
                                Num(s.presence_penalty));
  }
  if (!(s.frequency_penalty >= -2.0f && s.frequency_penalty <= 2.0f)) {
    return InvalidArgumentError(where + "frequency_penalty must be in [-2, 2], got " +
                                Num(s.frequency_penalty));
  }
  return OkStatus();
}

int64_t DeviceSampler::PenaltyTokensBound(std::span<const TokenSampling> rows) {
  int64_t n = 0;
  for (const TokenSampling& s : rows) {
    const bool rep = s.repetition_penalty != 1.0f;
    if (rep) n += static_cast<int64_t>(s.prompt.size());
    if (rep || s.presence_penalty != 0.0f || s.frequency_penalty != 0.0f) {
      n += static_cast<int64_t>(s.generated.size());
    }
  }
  return n;
}

DeviceSampler::DeviceSampler(int64_t max_rows, int64_t vocab, int64_t max_penalty_tokens)
    : max_rows_(max_rows),
      vocab_(vocab),
      max_penalty_tokens_(max_penalty_tokens),
      count_of_(vocab, -1) {
  const size_t R = static_cast<size_t>(max_rows);
  size_t o = 0;
  auto take = [&](size_t bytes) {
    const size_t at = o;
    o += Align256(bytes);
    return at;
  };
  layout_.temperature = take(R * 4);
  layout_.top_k = take(R * 4);
  layout_.top_p = take(R * 4);
  layout_.min_p = take(R * 4);
  layout_.seed = take(R * 8);
  layout_.counter = take(R * 8);
  layout_.penalties = take(R * 12);
  layout_.indptr = take((R + 1) * 4);
  layout_.ids = take(R * 4);
  layout_.entries = take(static_cast<size_t>(max_penalty_tokens) * 8);
  layout_.bytes = o;
}

StatusOr<std::unique_ptr<DeviceSampler>> DeviceSampler::Create(int64_t max_rows, int64_t vocab,
                                                               int64_t max_penalty_tokens) {
  if (max_rows < 1 || max_rows > INT32_MAX) {
    return InvalidArgumentError("DeviceSampler: max_rows must be in [1, 2^31), got " +
                                std::to_string(max_rows));
  }
  if (vocab < 1 || vocab > INT32_MAX) {
    return InvalidArgumentError("DeviceSampler: vocab must be in [1, 2^31), got " +
                                std::to_string(vocab));
  }
  if (max_penalty_tokens < 0 || max_penalty_tokens > INT32_MAX) {
    return InvalidArgumentError("DeviceSampler: max_penalty_tokens must be in [0, 2^31), got " +
                                std::to_string(max_penalty_tokens));
  }
  std::unique_ptr<DeviceSampler> s(new DeviceSampler(max_rows, vocab, max_penalty_tokens));
  SQZ_ASSIGN_OR_RETURN(s->params_, DeviceMemory::Allocate(s->layout_.bytes, "sampling parameters"));
  SQZ_ASSIGN_OR_RETURN(s->workspace_,
                       DeviceMemory::Allocate(cuda::SamplingWorkspaceBytes(max_rows, vocab),
                                              "the sampling workspace"));
  SQZ_ASSIGN_OR_RETURN(s->staging_,
                       PinnedMemory::Allocate(s->layout_.bytes, "sampling parameter staging"));
  return s;
}

Status DeviceSampler::Sample(float* logits, int64_t rows, int64_t row_stride,
                             std::span<const TokenSampling> sampling, int32_t* tokens,
                             cudaStream_t stream) {
  if (rows != static_cast<int64_t>(sampling.size())) {
    return InvalidArgumentError("DeviceSampler: " + std::to_string(sampling.size()) +
                                " sampling entries for " + std::to_string(rows) + " rows");
  }
  if (rows > max_rows_) {
    return InvalidArgumentError("DeviceSampler: " + std::to_string(rows) +
                                " rows exceed max_rows " + std::to_string(max_rows_));
  }
  if (row_stride < vocab_) {
    return InvalidArgumentError("DeviceSampler: row_stride " + std::to_string(row_stride) +
                                " is below the vocabulary " + std::to_string(vocab_));
  }
  if (rows == 0) return OkStatus();
  for (size_t r = 0; r < sampling.size(); ++r) SQZ_RETURN_IF_ERROR(Validate(sampling[r], r));

  char* host = staging_.get<char>();
  auto* temperature = reinterpret_cast<float*>(host + layout_.temperature);
  auto* top_k = reinterpret_cast<int32_t*>(host + layout_.top_k);
  auto* top_p = reinterpret_cast<float*>(host + layout_.top_p);
  auto* min_p = reinterpret_cast<float*>(host + layout_.min_p);
  auto* seed = reinterpret_cast<uint64_t*>(host + layout_.seed);
  auto* counter = reinterpret_cast<uint64_t*>(host + layout_.counter);
  auto* penalties = reinterpret_cast<float*>(host + layout_.penalties);
  auto* indptr = reinterpret_cast<int32_t*>(host + layout_.indptr);
  auto* entries = reinterpret_cast<int32_t*>(host + layout_.entries);
  bool all_greedy = true, any_penalty = false;
  int64_t n_entries = 0;
  indptr[0] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const TokenSampling& s = sampling[r];
    temperature[r] = s.temperature;
    top_k[r] = s.top_k;
    top_p[r] = s.top_p;
    min_p[r] = s.min_p;
    seed[r] = s.seed;
    counter[r] = s.counter;
    penalties[3 * r] = s.repetition_penalty;
    penalties[3 * r + 1] = s.presence_penalty;
    penalties[3 * r + 2] = s.frequency_penalty;
    all_greedy = all_greedy && s.temperature == 0.0f;
    const bool rep = s.repetition_penalty != 1.0f;
    const bool additive = s.presence_penalty != 0.0f || s.frequency_penalty != 0.0f;
    // Distinct penalised tokens with their generated counts.
    if (rep) {
      for (int32_t t : s.prompt) {
        if (t < 0 || t >= vocab_ || count_of_[t] >= 0) continue;
        count_of_[t] = 0;
        touched_.push_back(t);
      }
    }
    if (rep || additive) {
      for (int32_t t : s.generated) {
        if (t < 0 || t >= vocab_) continue;
        if (count_of_[t] < 0) {
          count_of_[t] = 0;
          touched_.push_back(t);
        }
        ++count_of_[t];
      }
    }
    const bool fits = n_entries + static_cast<int64_t>(touched_.size()) <= max_penalty_tokens_;
    for (int32_t t : touched_) {
      if (fits) {
        entries[2 * n_entries] = t;
        entries[2 * n_entries + 1] = count_of_[t];
        ++n_entries;
      }
      count_of_[t] = -1;
    }
    const size_t row_tokens = touched_.size();
    touched_.clear();
    if (!fits) {
      return ResourceExhaustedError(
          "DeviceSampler: the rows' distinct penalised tokens exceed max_penalty_tokens " +
          std::to_string(max_penalty_tokens_) + " (row " + std::to_string(r) + " adds " +
          std::to_string(row_tokens) + ")");
    }
    indptr[r + 1] = static_cast<int32_t>(n_entries);
    any_penalty = any_penalty || n_entries > indptr[r];
  }

  char* dev = params_.get<char>();
  SQZ_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dev, host, layout_.ids, cudaMemcpyHostToDevice, stream),
                           "DeviceSampler: parameters");
  if (any_penalty) {
    SQZ_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dev + layout_.entries, host + layout_.entries,
                                             n_entries * 8, cudaMemcpyHostToDevice, stream),
                             "DeviceSampler: penalised tokens");
    ApplyPenaltiesKernel<<<static_cast<unsigned>(rows), kPenaltyThreads, 0, stream>>>(
        logits, row_stride, reinterpret_cast<const int32_t*>(dev + layout_.indptr),
        reinterpret_cast<const int2*>(dev + layout_.entries),
        reinterpret_cast<const float*>(dev + layout_.penalties));
    SQZ_RETURN_IF_ERROR(cuda::LaunchStatus("DeviceSampler: penalties"));
  }
  auto* ids = reinterpret_cast<int32_t*>(dev + layout_.ids);
  if (all_greedy) {
    SQZ_RETURN_IF_ERROR(cuda::ArgMax<float>(logits, rows, vocab_, row_stride, ids, stream));
  } else {
    cuda::SamplingParams p;
    p.temperature = reinterpret_cast<const float*>(dev + layout_.temperature);
    p.top_k = reinterpret_cast<const int32_t*>(dev + layout_.top_k);
    p.top_p = reinterpret_cast<const float*>(dev + layout_.top_p);
    p.min_p = reinterpret_cast<const float*>(dev + layout_.min_p);
    p.seed = reinterpret_cast<const uint64_t*>(dev + layout_.seed);
    p.counter = reinterpret_cast<const uint64_t*>(dev + layout_.counter);
    SQZ_RETURN_IF_ERROR(cuda::Sample<float>(logits, rows, vocab_, row_stride, p, ids,
                                            workspace_.get(), workspace_.bytes(), stream));
  }
  auto* host_ids = reinterpret_cast<int32_t*>(host + layout_.ids);
  SQZ_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_ids, ids, rows * 4, cudaMemcpyDeviceToHost, stream),
                           "DeviceSampler: tokens to host");
  SQZ_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "DeviceSampler: step");
  std::memcpy(tokens, host_ids, rows * 4);
  return OkStatus();
}

}  // namespace sqz
