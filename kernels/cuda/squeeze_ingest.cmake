# Squeezed Attention ingestion on the GPU: batched spherical k-means (kmeans.cu), the
# cluster-ordered re-layout, the coarse level and the calibration histograms (squeeze_ingest.cu),
# and the host driver that returns a ContextSnapshot (engine/squeeze_gpu). Included by
# kernels/cuda/CMakeLists.txt.
set(SQZ_INGEST_DIR ${CMAKE_CURRENT_LIST_DIR})
sqz_add_library(sqz_kernels_squeeze_ingest
  SOURCES ${SQZ_INGEST_DIR}/kmeans.cu ${SQZ_INGEST_DIR}/kmeans_assign.cu
          ${SQZ_INGEST_DIR}/squeeze_ingest.cu
  DEPS sqz_kernels_cuda CUDA::cudart)
target_compile_options(sqz_kernels_squeeze_ingest PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-O3 -Xptxas=-warn-spills -lineinfo>)

# The host driver: CapturedContext -> device ingestion -> ContextSnapshot (engine/squeeze_gpu).
sqz_add_library(sqz_squeeze_gpu
  SOURCES ${PROJECT_SOURCE_DIR}/engine/squeeze_gpu/gpu_index_builder.cc
  DEPS sqz_squeeze sqz_kernels_squeeze_ingest CUDA::cudart)

# Tests need a GPU (they skip with a WARN without one) and use the CPU reference as the oracle.
sqz_add_test(kernels_kmeans_test
  SOURCES ${SQZ_INGEST_DIR}/kmeans_test.cc ${SQZ_INGEST_DIR}/squeeze_ingest_test.cc
  DEPS sqz_kernels_squeeze_ingest sqz_squeeze sqz_cuda_testing TIMEOUT 600)
sqz_add_test(squeeze_gpu_index_builder_test
  SOURCES ${PROJECT_SOURCE_DIR}/engine/squeeze_gpu/gpu_index_builder_test.cc
  DEPS sqz_squeeze_gpu sqz_cuda_testing TIMEOUT 600)

if(EXISTS ${PROJECT_SOURCE_DIR}/bench/kmeans_gpu/CMakeLists.txt)
  add_subdirectory(${PROJECT_SOURCE_DIR}/bench/kmeans_gpu ${PROJECT_BINARY_DIR}/bench/kmeans_gpu)
endif()
