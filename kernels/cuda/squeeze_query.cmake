# Squeezed Attention on the GPU, query time: centroid lookup and cluster selection
# (squeeze_select, per decode token or per block of prefill tokens: sparse_prefill_select), feeding
# the sparse mode of DecodeAttention (decode_attention.h) and SparsePrefillAttention
# (sparse_prefill_attention.h). Included by kernels/cuda/CMakeLists.txt (so only when SQZ_HAVE_CUDA).
sqz_add_library(sqz_kernels_squeeze_query
  SOURCES squeeze_select.cu squeeze_select_cluster.cu squeeze_select_grouped.cu
          sparse_prefill_select.cu sparse_prefill_attention.cu
  DEPS sqz_kernels_cuda)
target_compile_options(sqz_kernels_squeeze_query PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-O3 -Xptxas=-warn-spills -lineinfo>)

# Selections against the CPU reference (engine/squeeze SelectClusters, per token and per block) and
# sparse decode and prefill attention against cpu::AttendAccumulate; skips (WARN) without a CUDA
# device.
sqz_add_test(kernels_cuda_squeeze_query_test
  SOURCES squeeze_select_test.cc sparse_decode_test.cc sparse_prefill_select_test.cc
          sparse_prefill_attention_test.cc
  DEPS sqz_kernels_squeeze_query sqz_kernels_cuda sqz_kernels_cpu sqz_squeeze sqz_cuda_testing
  TIMEOUT 600)

# The kernel benchmark (a shared library with a C ABI driven from Python): bench/squeeze_gpu.
if(EXISTS ${PROJECT_SOURCE_DIR}/bench/squeeze_gpu/CMakeLists.txt)
  add_subdirectory(${PROJECT_SOURCE_DIR}/bench/squeeze_gpu ${PROJECT_BINARY_DIR}/bench/squeeze_gpu)
endif()
