// Dequantization of ggml tensor data to fp32, for the types our GGUF loader accepts:
// F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
//
// Block layouts and arithmetic follow ggml (ggml-common.h, dequantize_row_* in ggml-quants.c),
// with the same order of float operations, so results equal ggml's and the gguf Python package's
// (gguf.quants.dequantize) bit for bit; tests/gguf checks this on real and generated blocks.
// Source bytes need no alignment.
//
// Thread safety: pure functions, single-threaded (callers may run tensors in parallel).
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "engine/gguf/gguf_file.h"

namespace sqz::gguf {

// IEEE half / bfloat16 bits -> float (exact; subnormals, infinities and NaNs preserved).
float Fp16ToFp32(uint16_t h);
float Bf16ToFp32(uint16_t b);

// Whether Dequantize supports the ggml type value `type`.
bool CanDequantize(uint32_t type);

// dst[0..n) = the n elements stored as `type` at src (n / block_size blocks of type_size bytes).
// UNIMPLEMENTED for a type CanDequantize rejects; INVALID_ARGUMENT when n < 0 or n is not a
// multiple of the type's block size.
Status Dequantize(uint32_t type, const uint8_t* src, int64_t n, float* dst);

// All elements of `t` in storage order (row-major with dims reversed: element (r, c) of a 2-D
// tensor with dims {cols, rows} is at r * cols + c). Errors as Dequantize, naming the tensor.
StatusOr<std::vector<float>> DequantizeTensor(const TensorInfo& t);
// Same, into dst[0..t.n_elements).
Status DequantizeTensorTo(const TensorInfo& t, float* dst);

}  // namespace sqz::gguf
